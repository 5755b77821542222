"""Free-text components left out of a field memo: one entry for every patient's identifiers and names.

A field memo entry is what a field's rules write for one field text. For PID-3 (CX) and
PID-5 (XPN) the text is new in nearly every message, because it carries the patient's own
identifier value and names, so the memo never hits and each message ran the rule
interpreter, and the resource had no reusable shape (``shapes``). Yet those components
reach the FHIR resource untouched: CX.1 becomes ``Identifier.value``, XPN.1/XPN.2 the
family and given names. This module says which components of a field behave that way,
from the rules themselves (:func:`hole_components`), and replaces them in the field text by
numbered placeholders (:func:`masked`): the rules' writes for the masked text, with the
placeholders, are remembered once per masked text and reused with each message's own
component texts put in.

A component is left out only when every rule that reads it is a text conversion (``string``,
``markdown``, ``code``, ``id``) without vocabulary, no condition reads it, it reaches the value
through datatype maps' first components only, and no rule on its way makes a quantity (whose
unit is normalized to UCUM); and only when its text is plain (no
delimiter, escape, explicit null or surrounding blanks) and differs from the field's other
left-out texts (two equal names are joined by the finishing pass, two placeholders are not).
The first masked entry of each masked text is checked against the interpreter's writes for
the real text (``field_rules``), so a rule this analysis misjudges costs speed, not
correctness.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from mapping.v2.engine import JOINED_TEXT_MAPS, MARK, QUANTITY_TYPES, DelimitersLike
from mapping.v2.tables import datatype_maps, segment_maps

TEXT_TYPES = frozenset({"string", "markdown", "code", "id"})
_dumps = orjson.dumps


def placeholder(k: int) -> str:
    """The ``k``-th left-out component of a field, as the masked text and the entry carry it."""
    return f"{MARK}{k}h{MARK}"


def placeholder_json(k: int) -> bytes:
    """:func:`placeholder` as a JSON string inside a remembered entry."""
    return f'"{placeholder(k)}"'.encode()


_PLACEHOLDERS = [placeholder(k) for k in range(64)]
_JSON_HOLES = [placeholder_json(k) for k in range(64)]


def fill(entry: bytes, replacements: list[Any]) -> bytes:
    """An entry with each placeholder ``k`` replaced by ``replacements[k]`` as JSON."""
    for k, value in enumerate(replacements):
        entry = entry.replace(_JSON_HOLES[k] if k < 64 else placeholder_json(k), _dumps(value))
    return entry


def _passes_through(rule: dict[str, Any], visiting: frozenset[str]) -> bool:
    """True when the text of the value ``rule`` reads reaches the output only as a whole JSON
    string (or only whether it is there counts)."""
    if rule["ref"]:
        return False
    if rule["assign"] is not None:
        return True  # a literal: only whether the value is there counts, and a placeholder is there
    if rule["vocab"] or rule["type"] in QUANTITY_TYPES:
        return False  # looked up in a vocabulary, or a unit normalized to UCUM, after any map
    mapname = rule["map"]
    if mapname and datatype_maps().get(mapname):
        return mapname not in visiting and 1 not in _unsafe(mapname, visiting | {mapname})
    if rule["type"] not in TEXT_TYPES:
        return False
    return not (mapname and mapname.split("[", 1)[0] in JOINED_TEXT_MAPS)


def _unsafe(mapname: str, visiting: frozenset[str]) -> set[int]:
    """Components of a datatype map's value that may change its output other than by passing
    through: read by a condition, or by a rule that does not pass its text through."""
    bad: set[int] = set()
    for rule in datatype_maps().get(mapname) or ():
        bad.update(ref[1] or 1 for ref in _refs(rule["cond"]))
        if not _passes_through(rule, visiting):
            bad.add(rule["f"])
    return bad


def _refs(cond: Any) -> list[list[Any]]:
    """The (segment, field or component, component, subcomponent) references of a condition."""
    if cond is None:
        return []
    if cond[0] in ("and", "or"):
        return [*_refs(cond[1]), *_refs(cond[2])]
    return [cond[1], cond[2]] if cond[0] in ("eqref", "neref") else [cond[1]]


def _text_read(mapname: str, visiting: frozenset[str]) -> set[int]:
    """Components of a datatype map's value that some rule writes as text."""
    read: set[int] = set()
    for rule in datatype_maps().get(mapname) or ():
        if rule["assign"] is not None or rule["ref"]:
            continue
        sub = rule["map"]
        if sub and datatype_maps().get(sub):
            if sub not in visiting and 1 in _text_read(sub, visiting | {sub}):
                read.add(rule["f"])
        elif rule["type"] in TEXT_TYPES:
            read.add(rule["f"])
    return read


def _first_list(steps: list[list[Any]]) -> tuple[str, int] | None:
    """The first list on a rule's path and the slot it writes (``("identifier", 2)``)."""
    names = []
    for step in steps:
        names.append(step[0])
        if step[2]:
            return ".".join(names), step[1]
    return None


@cache
def _shared_lists() -> frozenset[tuple[str, str, int]]:
    """(resource type, list, slot) written by more than one segment map: finishing joins
    such elements when they agree, which it cannot judge for placeholders."""
    writers: dict[tuple[str, str, int], set[str]] = {}
    for mapname, rules in segment_maps().items():
        rtype = mapname.partition("[")[2].rstrip("]")
        for rule in rules:
            found = _first_list(rule["steps"])
            if found is not None:
                writers.setdefault((rtype, *found), set()).add(mapname)
    return frozenset(k for k, maps in writers.items() if len(maps) > 1)


def hole_components(mapname: str, rules: tuple[dict[str, Any], ...], field: int) -> tuple[int, ...]:
    """The components of a field left out of its memo (see the module docstring), given the
    segment map and the rules of that field; ``()`` when none is."""
    rtype = mapname.partition("[")[2].rstrip("]")
    shared = _shared_lists()
    maps = set()
    for rule in rules:
        found = _first_list(rule["steps"])
        if found is not None and (rtype, *found) in shared:
            return ()
        if rule["c"] or rule["ref"] or rule["vocab"] or rule["type"] in QUANTITY_TYPES:
            return ()
        if rule["assign"] is not None:
            continue
        if not (rule["map"] and datatype_maps().get(rule["map"])):
            return ()  # the field converted as one value: nothing to leave out
        maps.add(rule["map"])
    bad = {ref[2] or 1 for rule in rules for ref in _refs(rule["cond"]) if ref[1] == field}
    read: set[int] = set()
    for mapname in maps:
        bad |= _unsafe(mapname, frozenset({mapname}))
        read |= _text_read(mapname, frozenset({mapname}))
    return tuple(sorted(read - bad))


def masked(raw: str, holes: tuple[int, ...], d: DelimitersLike) -> tuple[str, list[str], list[tuple[str, ...]]] | None:
    """``raw`` with the non-empty ``holes`` components of each repetition replaced by
    placeholders, their texts in placeholder order, and those texts by repetition.

    ``None`` when a component to leave out is not plain text, when one repetition holds a
    text twice or two repetitions hold the same texts (finishing joins equal list elements,
    it cannot join two placeholders: see also ``shapes.key_of``), or when there is nothing to
    leave out."""
    texts: list[str] = []
    groups: list[tuple[str, ...]] = []
    reps = raw.split(d.repetition)
    comp, sub, esc = d.component, d.subcomponent, d.escape
    for r, rep in enumerate(reps):
        parts = rep.split(comp)
        first = len(texts)
        for c in holes:
            if c > len(parts):
                break
            text = parts[c - 1]
            if not text:
                continue
            if sub in text or esc in text or MARK in text or '"' in text or text != text.strip():
                return None
            k = len(texts)
            parts[c - 1] = _PLACEHOLDERS[k] if k < 64 else placeholder(k)
            texts.append(text)
        if len(texts) > first:
            group = tuple(texts[first:])
            if len(set(group)) != len(group) or group in groups:
                return None
            groups.append(group)
            reps[r] = comp.join(parts)
    if not texts:
        return None
    return d.repetition.join(reps), texts, groups
