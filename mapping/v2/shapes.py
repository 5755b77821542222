"""Finished resources reused by shape: the same writes, the values left out, give the same JSON.

A resource under construction is a write log (``field_rules.LOG_KINDS``): memo entries of
its fields, single values at paths without lists (a new OBX-5 result, a new OBX-14 time) and
references to other resources of the message. Finishing it (first rule wins, list slots
joined, empty elements dropped, references resolved, defaults, pruning, required elements)
looks at which elements are there, never at what a single value outside a list says. So the
finished JSON is a function of the log with those values and the reference targets replaced
by placeholders: it is built once per shape, as JSON bytes with the placeholders in it, and
every later resource of that shape is the template with its own values, references and id
put in (bytes replacements and one ``orjson.loads``), without a resource tree.

Placeholders are strings between U+FFFF noncharacters. A template or id key in which that
character appears other than in placeholders (text a sender put there) is not kept: that
resource is finished the long way.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from mapping.v2 import holes
from mapping.v2.engine import (
    MARK,
    Node,
    Ref,
    finalize,
    has_element,
    identifier_key,
    merge,
    missing_required,
    name_key,
    prune,
    thaw,
)
from mapping.v2.field_rules import (
    ENTRY,
    HOLED,
    LINK,
    NEW_ENTRY,
    VALUE,
    VALUE_IN_LIST,
    WRITERS,
    WRITES,
    WriteLog,
)
from mapping.v2.tables import config

_MARK_BYTES = MARK.encode()
ID_PLACEHOLDER = f"{MARK}id{MARK}"
SHAPE_LIMIT = 20_000
"""Templates kept before the table starts over."""


def value_placeholder(i: int) -> str:
    return f"{MARK}{i}v{MARK}"


def reference_placeholder(k: int) -> str:
    return f"{MARK}{k}r{MARK}"


_VALUE, _REFERENCE, _ID = range(3)
_PLACEHOLDER = re.compile(b'("\xef\xbf\xbf(?:[0-9]+[vr]|id)\xef\xbf\xbf")')
"""A placeholder as a JSON string in a template (split keeps it: it is a group)."""


@dataclass(slots=True)
class Shape:
    """A finished resource with placeholders, and what its id recipe reads."""

    parts: tuple[Any, ...] | None
    """``{"resourceType", "id", …}`` as JSON cut at the placeholders: bytes between
    ``(what, number)`` pairs; ``None`` when the resource lacks a required element."""
    identifier: str
    name: str
    missing: tuple[str, ...]
    fill: Callable[[str, list[Any], list[Any]], dict[str, Any]] | None
    """The finished resource from its id, values and reference targets (:func:`_lazy_fill`): the
    same as ``parts`` joined and parsed."""


SHAPES: dict[tuple[Any, ...], Shape] = {}
_BY_IDENTITY: dict[tuple[Any, ...], tuple[Shape, tuple[Any, ...]]] = {}
"""The type, the identities of the links key and log items → shape and the key (which keeps
those objects alive, so no other object can take their identities while the entry exists)."""
_BY_STEPS: dict[tuple[Any, ...], tuple[Shape, tuple[Any, ...], tuple[Any, ...]]] = {}
"""The type and the identities of the links key and of a segment memo's steps → shape, the links
key and the steps (kept alive as in ``_BY_IDENTITY``)."""


def shape_for(rtype: str, log: WriteLog, links_key: tuple[Any, ...], links: list[Any] | tuple[()],
              fallbacks: tuple[Any, ...], targets: list[Any], emit: frozenset[str]) -> Shape | None:
    """:func:`shape_of` the resource's :func:`key_of`, found first by the identities of the key's
    parts: replayed segments log the same item objects, and plans and the merged-target
    numbering keep their links keys, so most resources are found without hashing their logs.
    A log with items of its own (``fresh``) is looked up by value only: remembering it by
    identities would only fill the table (and the garbage collector's passes)."""
    if not log.plain:
        return None
    replayed = log.replayed
    if replayed is not None and replayed[1] == len(log):
        return _replayed_shape(rtype, log, links_key, links, fallbacks, targets, emit, replayed[0])
    if log.fresh:
        key = key_of(rtype, log, links_key)
        return None if key is None else shape_of(key, rtype, log, links, fallbacks, targets, emit)
    return _remembered(_BY_IDENTITY, (rtype, id(links_key), *map(id, log)), (), rtype, log, links_key, links,
                       fallbacks, targets, emit)


def _replayed_shape(rtype: str, log: WriteLog, links_key: tuple[Any, ...], links: list[Any] | tuple[()],
                    fallbacks: tuple[Any, ...], targets: list[Any], emit: frozenset[str],
                    steps: tuple[Any, ...]) -> Shape | None:
    """The shape of a log one segment memo's ``steps`` wrote whole (``WriteLog.replayed``): found
    by the identities of the steps and the links key, without looking at the log's items."""
    return _remembered(_BY_STEPS, (rtype, id(links_key), id(steps)), (steps,), rtype, log, links_key, links,
                       fallbacks, targets, emit)


def _remembered(table: dict[tuple[Any, ...], tuple[Any, ...]], ident: tuple[Any, ...], alive: tuple[Any, ...],
                rtype: str, log: WriteLog, links_key: tuple[Any, ...], links: list[Any] | tuple[()],
                fallbacks: tuple[Any, ...], targets: list[Any], emit: frozenset[str]) -> Shape | None:
    """The shape remembered in ``table`` under ``ident`` (object identities), else found by its key and
    remembered there; the entry keeps the key and ``alive`` referenced, so the identities stay theirs."""
    hit = table.get(ident)
    if hit is not None:
        return hit[0] if _values_apart(log) else None
    key = key_of(rtype, log, links_key)
    if key is None:
        return None
    shape = shape_of(key, rtype, log, links, fallbacks, targets, emit)
    if shape is not None:
        if len(table) >= SHAPE_LIMIT:
            table.clear()
        table[ident] = (shape, key, *alive)
    return shape


def forget() -> None:
    """Drop every template."""
    SHAPES.clear()
    _BY_IDENTITY.clear()
    _BY_STEPS.clear()


def key_of(rtype: str, log: WriteLog, links_key: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The shape key of a resource: its type, its links (as the message plan numbers them)
    and its write log without the values; ``None`` when the log holds what only the long
    way finishes (values the interpreter just wrote, values inside lists)."""
    if not log.plain or not _values_apart(log):
        return None
    return rtype, links_key, tuple(log)


def _values_apart(log: WriteLog) -> bool:
    """True when the log's values cannot be taken for placeholders or be joined with other
    list elements: what a template needs besides the log's items."""
    for v in log.values:
        if v.__class__ is str and MARK in v:
            return False
    groups = log.groups
    return not groups or _holes_apart(log, groups)


def _holes_apart(log: WriteLog, groups: list[tuple[str, ...]]) -> bool:
    """True when no list element holding left-out texts (``holes``) can equal another element:
    finishing joins equal elements, which it cannot see between placeholders. Two equal
    elements hold the same texts, so it is enough that no two repetitions left out the same
    texts and no left-out text is a string of the resource's memo entries (the texts other
    entries hold, and those masked entries keep)."""
    if len(set(groups)) != len(groups):
        return False
    others = b"".join([item[1] for item in log if item[0] == ENTRY or item[0] == HOLED])
    return not any(b'"' + text.encode() + b'"' in others for group in groups for text in group)


def materialize(log: WriteLog, links: list[Any] | tuple[()], fallbacks: tuple[Any, ...], placeholders: bool,
                first: int = 0) -> Node:
    """The resource tree a write log and the links after it build; with ``placeholders``,
    single values stand in as :func:`value_placeholder` strings (numbered from ``first``)."""
    node = Node()
    values = log.values
    i = 0
    for item in log:
        kind = item[0]
        if kind in (ENTRY, NEW_ENTRY):
            base = item[2]
            for w, value, j in orjson.loads(item[1]):
                WRITERS[w](node, value, base + j)
        elif kind in (VALUE, VALUE_IN_LIST):
            WRITERS[item[1]](node, value_placeholder(first + i) if placeholders else values[i], item[2])
            i += 1
        elif kind == HOLED:
            n = item[3]
            texts = [value_placeholder(first + k) for k in range(i, i + n)] if placeholders else values[i:i + n]
            i += n
            base = item[2]
            for w, value, j in orjson.loads(holes.fill(item[1], texts)):
                WRITERS[w](node, value, base + j)
        elif kind == WRITES:
            base = item[2]
            for w, value, j in item[1]:
                WRITERS[w](node, thaw(value), base + j)
    for kind, what, target in links:
        if kind == LINK:
            what(node, Ref(target), 0)
        else:
            for w, value, j in orjson.loads(what):
                WRITERS[w](node, value, j)
    for fallback in fallbacks:
        if fallback is not None and fallback[0] not in node:
            node[fallback[0]] = Ref(fallback[1])
    return node


def keyed_parts(node: dict[str, Any]) -> dict[str, Any]:
    """The finished ``identifier`` and ``name`` of a resource under construction: all an
    id recipe reads, without finishing the rest of the tree (references resolve to nothing)."""
    out = {}
    for k in ("identifier", "name"):
        v = node.get(k)
        if v is not None:
            fv = finalize(v, _no_reference)
            if fv not in (None, {}, [], ""):
                out[k] = fv
    return out


def _no_reference(_ref: Ref) -> None:
    return None


def finish(body: dict[str, Any], rtype: str) -> list[str]:
    """Defaults, pruning and the required-element check on a finalized body; what it lacks."""
    cfg = config()
    _element_defaults(body, rtype, cfg["element_defaults"])
    _drop_absent_reasons(body, rtype, cfg["data_absent_reason"])
    prune(body, rtype)
    for k, v in cfg["defaults"].get(rtype, {}).items():
        if k not in body:  # a copy: resources must not share mutable default objects
            body[k] = copy.deepcopy(v)
    _status_without(body, cfg["status_without"].get(rtype))
    return missing_required(body, rtype)


def _status_without(body: dict[str, Any], rule: dict[str, Any] | None) -> None:
    """A status R4 allows only with elements the message did not give is replaced (app-3: an
    Appointment without start and end can only be proposed, cancelled or waitlist)."""
    if rule and not all(k in body for k in rule["elements"]) and body.get("status") not in rule["allowed"]:
        body["status"] = rule["status"]


def _drop_absent_reasons(body: dict[str, Any], rtype: str, paths: list[str]) -> None:
    """A ``valueQuantity`` with units but no number (OBX-6 sent, OBX-5 empty or not a number)
    is no value; and no ``dataAbsentReason`` beside a ``value[x]`` (R4 obs-6, obs-7): the IG
    writes one for OBX-11 = N whatever OBX-5 holds, and a value that was sent is not absent."""
    for path in paths:
        head, _, element = path.partition(".")
        if head != rtype:
            continue
        items = [body] if not element else body.get(element) or []
        for item in items if isinstance(items, list) else [items]:
            if not isinstance(item, dict):
                continue
            quantity = item.get("valueQuantity")
            if isinstance(quantity, dict) and "value" not in quantity:
                del item["valueQuantity"]
            if "dataAbsentReason" in item and has_element(item, "value"):
                del item["dataAbsentReason"]


def _element_defaults(body: dict[str, Any], rtype: str, defaults: dict[str, dict[str, Any]]) -> None:
    for path, values_ in defaults.items():
        head, _, element = path.partition(".")
        if head != rtype or element not in body:
            continue
        items = body[element] if isinstance(body[element], list) else [body[element]]
        for item in items:
            for k, v in values_.items():
                if k not in item:
                    item[k] = copy.deepcopy(v)


def shape_of(key: tuple[Any, ...], rtype: str, log: WriteLog, links: list[Any], fallbacks: tuple[Any, ...],
             targets: list[Any], emit: frozenset[str]) -> Shape | None:
    """The shape for ``key``, built from this log when it is new; ``None`` when this
    resource cannot be templated (see the module docstring)."""
    shape = SHAPES.get(key)
    if shape is not None:
        return shape
    return _made(key, rtype, materialize(log, links, fallbacks, True), len(log.values), targets, emit)


def merged_shape(key: tuple[Any, ...], rtype: str, parts: list[tuple[WriteLog, Any, tuple[Any, ...]]],
                 targets: list[Any], emit: frozenset[str]) -> Shape | None:
    """The shape of resources with one id merged into the first (``engine.merge``), from their
    logs, links and fallbacks in message order: the values are all parts' values one after
    the other, ``targets`` the references of all parts (merged resources as one). ``key``
    holds every part's shape key; the logs must be plain and without left-out texts, so no
    list element holds a value (merging and finishing never compare one)."""
    shape = SHAPES.get(key)
    if shape is not None:
        return shape
    node: Node | None = None
    first = 0
    for log, links, fallbacks in parts:
        part = materialize(log, links, fallbacks, True, first)
        first += len(log.values)
        if node is None:
            node = part
        else:
            merge(node, part)
    assert node is not None
    return _made(key, rtype, node, first, targets, emit)


def _made(key: tuple[Any, ...], rtype: str, node: Node, n_values: int, targets: list[Any],
          emit: frozenset[str]) -> Shape | None:
    """The shape of a resource tree with placeholders, kept under ``key``."""
    parts = keyed_parts(node)
    ident, name = identifier_key(parts, rtype), name_key(parts)
    resolve = _placeholder_resolver(targets, emit)
    body = finalize(node, resolve) or {}
    missing = finish(body, rtype)
    placeholders = [(value_placeholder(i), _VALUE, i) for i in range(n_values)]
    placeholders += [(reference_placeholder(k), _REFERENCE, k) for k in range(len(targets))]
    if not _only_placeholders(ident, placeholders) or not _only_placeholders(name, placeholders):
        return None
    if missing:
        shape = Shape(None, ident, name, tuple(missing), None)
    else:
        template = orjson.dumps({"resourceType": rtype, "id": ID_PLACEHOLDER, **body})
        placeholders.append((ID_PLACEHOLDER, _ID, 0))
        where = {b'"' + p.encode() + b'"': (what, n) for p, what, n in placeholders}
        pieces = _PLACEHOLDER.split(template)
        parts: list[Any] = []
        for k, piece in enumerate(pieces):
            parts.append(piece if k % 2 == 0 else where.get(piece))
        if _MARK_BYTES in b"".join(pieces[::2]) or None in parts:  # the character came from the message
            return None
        shape = Shape(tuple(parts), ident, name, (), None)
        shape.fill = _lazy_fill(shape, template, {p: (what, n) for p, what, n in placeholders})
    if len(SHAPES) >= SHAPE_LIMIT:
        forget()
    SHAPES[key] = shape
    return shape


def _only_placeholders(text: str, placeholders: list[tuple[str, int, int]]) -> bool:
    if MARK not in text:
        return True
    for p, _, _ in placeholders:
        text = text.replace(p, "")
    return MARK not in text


def _index(targets: list[Any], target: Any) -> int:
    return next(k for k, t in enumerate(targets) if t is target)


def _placeholder_resolver(targets: list[Any], emit: frozenset[str]) -> Callable[[Ref], dict[str, Any] | None]:
    def resolve(ref: Ref) -> dict[str, Any] | None:
        target = ref.target.root()
        if target.type not in emit:
            return None
        return {"reference": reference_placeholder(_index(targets, target))}
    return resolve


def id_key(text: str, values: list[Any]) -> str:
    """An id recipe's identifier or name key with this resource's values put in."""
    if MARK not in text:
        return text
    n = len(values)
    return "".join([part if part.__class__ is str else str(values[part]) if part < n else value_placeholder(part)
                    for part in _key_parts(text)])


_VALUE_PLACEHOLDER = re.compile(f"{MARK}([0-9]+)v{MARK}")


@lru_cache(maxsize=4096)
def _key_parts(text: str) -> tuple[str | int, ...]:
    """An identifier or name key cut at its value placeholders: texts, and value numbers between."""
    return tuple(int(piece) if k % 2 else piece for k, piece in enumerate(_VALUE_PLACEHOLDER.split(text)))


def _reference(target: Any) -> str:
    """``Type/id`` of a reference target, made once per target."""
    reference = target.reference = f"{target.type}/{target.id}"
    return reference


def _as_json(value: Any) -> Any:
    """A value as the template's JSON carries it: what orjson writes, read back (a number that is
    not finite becomes ``None``; text orjson cannot write fails here as it would there)."""
    return orjson.loads(orjson.dumps(value))


def _lazy_fill(shape: Shape, template: bytes, where: dict[str, tuple[int, int]]
               ) -> Callable[[str, list[Any], list[Any]], dict[str, Any]]:
    """A shape's fill: its parts joined and parsed, and from its :data:`COMPILE_AFTER`-th use on
    its generated function (:func:`_filler`). Compiling one costs what some hundreds of fills
    save, and a feed whose identifiers and names repeat makes a Patient shape per patient."""
    uses = 0

    def fill(rid: str, values: list[Any], targets: list[Any]) -> dict[str, Any]:
        nonlocal uses
        uses += 1
        if uses >= COMPILE_AFTER:
            shape.fill = _filler(orjson.loads(template), where)
        return _joined(shape.parts or (), rid, values, targets)
    return fill


COMPILE_AFTER = 256
"""Fills of a shape before its fill function is generated."""


def _joined(parts: tuple[Any, ...], rid: str, values: list[Any], targets: list[Any]) -> dict[str, Any]:
    """The finished resource: the template's parts with this resource's values, references and id
    as JSON between them, parsed."""
    out = []
    for part in parts:
        if part.__class__ is bytes:
            out.append(part)
        elif part[0] == _VALUE:
            out.append(orjson.dumps(values[part[1]]))
        elif part[0] == _REFERENCE:
            target = targets[part[1]]
            out.append(orjson.dumps(target.reference or _reference(target)))
        else:
            out.append(orjson.dumps(rid))
    return orjson.loads(b"".join(out))


def _filler(template: dict[str, Any], where: dict[str, tuple[int, int]]
            ) -> Callable[[str, list[Any], list[Any]], dict[str, Any]]:
    """Generated ``fill(id, values, targets)``: the finished resource as one Python display of
    the template (read back from its JSON), this resource's values, references and id put in
    where the template has placeholders; cheaper than joining JSON bytes and parsing them."""
    scope: dict[str, Any] = {"as_json": _as_json, "reference": _reference}
    lines = ["def fill(rid, values, targets):"]
    used: set[str] = set()

    def display(obj: Any) -> str:
        if obj.__class__ is dict:
            return "{" + ", ".join(f"{k!r}: {display(v)}" for k, v in obj.items()) + "}"
        if obj.__class__ is list:
            return "[" + ", ".join(display(v) for v in obj) + "]"
        if obj.__class__ is str and obj in where:
            what, n = where[obj]
            name = "rid" if what == _ID else f"{'v' if what == _VALUE else 'r'}{n}"
            if name not in used:
                used.add(name)
                if what == _VALUE:
                    # what JSON carries unchanged stays as it is (ASCII text, finite float, 64-bit int)
                    lines.extend([f"    v{n} = values[{n}]", f"    c = v{n}.__class__",
                                  f"    if not ((c is str and v{n}.isascii()) or (c is float and v{n} - v{n} == 0.0) "
                                  f"or (c is int and {-2**63} <= v{n} < {2**64})): v{n} = as_json(v{n})"])
                elif what == _REFERENCE:
                    lines.append(f"    r{n} = targets[{n}].reference or reference(targets[{n}])")
            return name
        return repr(obj)

    body = display(template)
    lines.append(f"    return {body}")
    exec("\n".join(lines), scope)  # the source is built above from the template only
    return scope["fill"]
