"""The rules of a segment map grouped by field, run once per distinct field text.

A segment map's rules are planned by v2 field (an empty field costs one lookup). What the
rules of a field write, and the resources they create, depend only on the field's text,
on the values their conditions read, on the message's delimiters and time zone: that is
remembered (:class:`FieldMemo`) and logged again for the next segment with the same
inputs (:class:`WriteLog`). The conditions of a field's rules become one generated
function of the values they read.

A memo entry is one JSON bytes object (writers named by number) and its key holds only
numbers and text, so the cyclic garbage collector has nothing in the memo to scan.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson

from mapping.v2 import holes, values
from mapping.v2.engine import (
    Context,
    SegmentLike,
    Writer,
    convert,
    freeze,
    pure_map,
    ref_value,
    writer_for,
)
from mapping.v2.tables import config, datatype_maps, primitive_components, segment_maps


class FieldMemo(dict):
    """One field plan's memo (for one delimiter set and time zone): the field text, with
    which of the rules' conditions held when the rules have conditions, → what the rules did.

    An entry is the JSON of the writes ``[[writer number, value, repetition], …]``, or, when
    the rules also created resources, the pair (JSON of ``[[type, id, body], …]``, JSON of
    the writes). Bytes: nothing for the cyclic garbage collector to count or scan, and one
    ``orjson.loads`` gives fresh copies of every value.

    A field whose texts hardly repeat (OBX-5 results, OBX-14 times) stops remembering its
    plain values (``keep``): they are converted by a generated primitive conversion instead
    (:func:`direct_function`), which costs less than a JSON dump, memory and garbage
    collector passes for entries nobody reads again, and keeps the resources it goes into
    of one shape (``shapes``). ``hits`` and ``misses`` decide, once: a field whose plain
    values are converted directly loses little when its texts start repeating.
    """

    __slots__ = ("hits", "misses", "keep", "aliases", "keep_aliases", "holed", "segment")

    def __init__(self) -> None:
        super().__init__()
        self.holed: dict[tuple[str, tuple[bool, ...] | None], bytes] = {}
        """Masked field text (``holes``), with which conditions held → its entry with
        placeholders, or ``b""`` when that text's entry does not reproduce the interpreter."""
        self.hits = 0
        self.misses = 0
        self.keep = True
        self.aliases = 0
        self.keep_aliases = True
        self.segment: FieldMemo | None = None
        """The memo of the segment map the field belongs to: a segment found there again found
        this field's text again too (counted as a hit of this memo when it decides ``keep``)."""

    def alias(self, key: Any, entry: bytes | tuple[bytes, bytes]) -> None:
        """Remember an entry found by which conditions held under the field's inputs too, unless
        such inputs hardly come again (OBX-6 keyed with a new OBX-5 value every time)."""
        self.aliases += 1
        if not self.keep_aliases:
            return
        if self.aliases >= 512 and self.hits * 4 < self.aliases:
            self.keep_aliases = False
            return
        self.store(key, entry)

    def store(self, key: Any, entry: bytes | tuple[bytes, bytes]) -> None:
        """Add an entry within the limits: of this field, and of all fields together."""
        if len(self) >= PLAN_MEMO_LIMIT:
            self.clear()
        _stored[0] += 1
        if _stored[0] > MEMO_BUDGET:
            _stored[0] = 0
            for table in MEMO_TABLES.values():
                for memo in table.values():
                    memo.clear()
        self[key] = entry


class SegmentMemo(FieldMemo):
    """A segment map's memo (``segment_functions``): the segment's texts → its steps. ``masks``:
    the fields of the map that had stopped remembering when ``stops`` read :data:`STOPS`, as
    (position in the segment key, texts the conditions compare them with)."""

    __slots__ = ("masks", "stops", "linked")

    def __init__(self) -> None:
        super().__init__()
        self.masks: tuple[tuple[int, frozenset[str]], ...] = ()
        self.stops = -1
        self.linked = False
        """The map's field memos know this memo (``FieldMemo.segment``)."""


class MemoTable(dict):
    """Field plan number → its :class:`FieldMemo`, for one delimiter set and time zone; a
    negative number names a segment map's :class:`SegmentMemo`."""

    def __missing__(self, number: int) -> FieldMemo:
        memo = self[number] = FieldMemo() if number >= 0 else SegmentMemo()
        return memo


MEMO_TABLES: dict[str, MemoTable] = {}
"""Delimiters + time zone (the inputs every field's result depends on besides its text) →
the memos of all field plans."""

PLAN_MEMO_LIMIT = 20_000
"""Entries one field plan remembers before its memo starts over."""
MEMO_BUDGET = 200_000
"""Entries stored into all field memos before they all start over (bounds the memory)."""
_stored = [0]


def memo_table(delimiters: str, tz: str | None) -> MemoTable:
    key = f"{delimiters}\x1f{tz}"
    table = MEMO_TABLES.get(key)
    if table is None:
        table = MEMO_TABLES[key] = MemoTable()
    return table


ENTRY, VALUE, NEW_ENTRY, LINK, WRITES, VALUE_IN_LIST, HOLED = range(7)
LOG_KINDS = {
    ENTRY: "(ENTRY, memo entry, repetition base): the writes of a field memo entry",
    VALUE: "(VALUE, writer number, repetition): one value (in ``values``) at a path without lists",
    NEW_ENTRY: "(NEW_ENTRY, writes JSON, repetition base): what the interpreter wrote",
    WRITES: "(WRITES, [(writer number, frozen value, repetition)], repetition base)",
    VALUE_IN_LIST: "(VALUE_IN_LIST, writer number, repetition): one value (in ``values``) inside a list",
    HOLED: "(HOLED, memo entry with placeholders, repetition base, n): a masked field's writes, its n "
           "left-out texts in ``values`` (``holes``)",
}
"""What a resource's write log holds. The links to other resources follow it (``LINK`` with
a writer and a target, or ``ENTRY`` with a literal's write)."""


class WriteLog(list):
    """What the segment maps write into one resource, in order (:data:`LOG_KINDS`), with the
    single values apart. ``plain``: only memo entries and values outside lists, so the log
    without its values is the resource's shape (``shapes``)."""

    __slots__ = ("values", "plain", "groups", "fresh", "replayed")

    def __init__(self) -> None:  # starts empty: list.__new__ made it so, no list.__init__ needed
        self.values: list[Any] = []
        self.plain = True
        self.groups: list[tuple[str, ...]] = []
        """The left-out texts of ``HOLED`` entries, by repetition."""
        self.fresh = False
        """Some item was made for this log alone (not one a replayed segment or a primitive
        conversion shares): its shape is not worth remembering by the items' identities."""
        self.replayed: tuple[Any, int] | None = None
        """``(steps, length)`` when one segment memo's steps wrote the whole log, every primitive
        conversion among them logging all its items: those items are then the steps' own, so
        the steps stand for them in the shape lookup (``shapes.shape_for``)."""


WRITERS: list[Writer] = []
"""Every writer a memo entry names, by number (memo entries are JSON)."""
_WRITER_NUMBERS: dict[Writer, int] = {}


def writer_number(w: Writer) -> int:
    """The number a memo entry names ``w`` by."""
    n = _WRITER_NUMBERS.get(w)
    if n is None:
        n = _WRITER_NUMBERS[w] = len(WRITERS)
        WRITERS.append(w)
    return n


@cache
def segment_plan(mapname: str) -> tuple[FieldPlan, ...] | None:
    """A segment map's rules grouped by field, so an empty field costs one lookup."""
    rules = segment_maps().get(mapname)
    if rules is None:
        return None
    by_field: dict[int, list[dict[str, Any]]] = {}
    for rule in rules:
        rule["pure"] = _pure_rule(rule)
        by_field.setdefault(rule["f"], []).append(rule)
    plans = []
    for f, rs in by_field.items():
        plans.append(FieldPlan(next(_PLAN_NUMBERS), f, tuple(rs), any(r.get("when_empty") for r in rs),
                               tuple(sorted({ref for r in rs for ref in cond_refs(r["cond"])})),
                               holes.hole_components(mapname, tuple(rs), f)))
    return tuple(plans)


_PLAN_NUMBERS = itertools.count()


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: a memo key
class FieldPlan:
    """The rules of one v2 field, memoized on the field text and the values their
    conditions read (``deps``); ``number`` stands for the plan in memo keys."""

    number: int
    field: int
    rules: tuple[dict[str, Any], ...]
    when_empty: bool
    deps: tuple[tuple[str, int, int, int], ...]
    holes: tuple[int, ...]
    """The components left out of the memo when their texts are new (``holes``)."""


def cond_refs(cond: Any) -> list[tuple[str, int, int, int]]:
    """The values (segment, field, component, subcomponent) a condition reads."""
    if cond is None:
        return []
    if cond[0] in ("and", "or"):
        return cond_refs(cond[1]) + cond_refs(cond[2])
    refs = [tuple(cond[1])]
    if cond[0] in ("eqref", "neref"):
        refs.append(tuple(cond[2]))
    return refs  # type: ignore[return-value]


def _pure_rule(rule: dict[str, Any]) -> bool:
    """True when converting the rule's value creates no resource (so it can be memoized)."""
    return not rule["ref"] and (not rule["map"] or pure_map(rule["map"]))


ENVELOPE_SEGMENTS = frozenset({"MSH", "FHS", "BHS"})


def run_field(fp: FieldPlan, raw: str, key: Any, holds: tuple[bool, ...] | None, memo: FieldMemo,
              seg: SegmentLike, log: WriteLog, ctx: Context,
              others: Callable[[str], SegmentLike | None], rep_base: int) -> None:
    """Run the rules of one valued field (or of an empty one with ``when_empty`` rules), add
    what they write to the resource's write log (see :data:`LOG_KINDS`) and remember under
    ``key`` what they wrote and which resources they created.

    ``holds`` says which of the rules have their condition met (``None``: no rule has one);
    ``key`` is then the field text with it.
    """
    envelope = fp.field <= 2 and seg.id in ENVELOPE_SEGMENTS
    if not memo.keep and raw and PLAIN(raw) and ctx.delimiters[1:5] == STANDARD and not envelope:
        direct = direct_function(fp, holds)
        if direct is not None:  # a value that is its own text: converted and written without the interpreter
            direct(raw.strip(), log, rep_base, ctx.default_tz)
            return
    if fp.holes and raw and not envelope:
        cut = holes.masked(raw, fp.holes, seg.delimiters)
        if cut is not None and _from_masked(fp, raw, key, holds, memo, seg, log, ctx, rep_base, *cut):
            return
    placed, created = _interpret(fp, raw, holds, seg, ctx)
    try:
        writes = orjson.dumps([[w, _fragment(value), i] for w, value, i in placed])
        made = orjson.dumps([[rtype, rid, _fragment(body)] for rtype, rid, body in created]) if created else None
    except TypeError:  # an integer beyond 64 bits: written as it is, converted again next time
        log.append((WRITES, placed, rep_base))
        log.plain = False
        return
    log.append((NEW_ENTRY, writes, rep_base))
    log.plain = False
    _remember(memo, key, writes, made)


def _interpret(fp: FieldPlan, raw: str, holds: tuple[bool, ...] | None, seg: SegmentLike, ctx: Context
               ) -> tuple[list[tuple[int, Any, int]], list[tuple[str, str, Any]]]:
    """The rule interpreter on one field text: the writes (writer number, frozen value,
    repetition) and the resources created (type, id, frozen body)."""
    d = seg.delimiters
    placed: list[tuple[int, Any, int]] = []
    created: list[tuple[str, str, Any]] = []
    ctx.created = created
    if not raw:
        reps = [""]
    elif seg.id in ENVELOPE_SEGMENTS and fp.field <= 2:
        reps = [raw]
    else:
        reps = raw.split(d.repetition)
    for j, rule in enumerate(fp.rules):
        if holds is not None and not holds[j]:
            continue
        comp = rule["c"]
        if comp:
            cut = [r.split(d.component) for r in reps]
            values_ = [c[comp - 1] if len(c) >= comp else "" for c in cut]
            level = 1
        else:
            values_ = reps
            level = 0
        if not values_[0] and not rule.get("when_empty"):
            continue
        whole = not comp and len(reps) == 1  # the field memo already keys on this text
        for i, rep in enumerate(values_ if rule["rep"] else values_[:1]):
            value = convert(rule, rep, level, d, ctx, not whole)
            if value is not None:
                w = writer_for(rule, value)
                placed.append((writer_number(w), freeze(value), i))
    ctx.created = None
    return placed, created


def _from_masked(fp: FieldPlan, raw: str, key: Any, holds: tuple[bool, ...] | None, memo: FieldMemo,
                 seg: SegmentLike, log: WriteLog, ctx: Context, rep_base: int, text: str, texts: list[str],
                 groups: list[tuple[str, ...]]) -> bool:
    """Log the writes of a field as the entry of its masked text (``holes``), the left-out texts
    as values, so the resource keeps the shape of every other resource with new texts there;
    while the field's texts still repeat, also remember the writes for this text. False when
    the masked text's entry does not reproduce what the interpreter writes (the caller
    interprets the text)."""
    hkey = (text, holds)
    entry = memo.holed.get(hkey)
    if entry is None:
        entry = memo.holed[hkey] = _masked_entry(fp, raw, holds, seg, ctx, text, texts)
        if len(memo.holed) >= PLAN_MEMO_LIMIT:
            memo.holed.clear()
    if not entry:
        return False
    log.append((HOLED, entry, rep_base, len(texts)))
    log.fresh = True
    log.values.extend(texts)
    log.groups.extend(groups)
    if memo.keep:
        _remember(memo, key, holes.fill(entry, texts), None)
    return True


def _masked_entry(fp: FieldPlan, raw: str, holds: tuple[bool, ...] | None, seg: SegmentLike, ctx: Context,
                  text: str, texts: list[str]) -> bytes:
    """The writes of the masked ``text`` as an entry with placeholders, if they give exactly the
    interpreter's writes for ``raw`` once ``texts`` are put in; ``b""`` otherwise."""
    masked_placed, masked_created = _interpret(fp, text, holds, seg, ctx)
    placed, created = _interpret(fp, raw, holds, seg, ctx)
    if masked_created or created:
        return b""
    try:
        entry = orjson.dumps([[w, _fragment(value), i] for w, value, i in masked_placed])
        writes = orjson.dumps([[w, _fragment(value), i] for w, value, i in placed])
    except TypeError:
        return b""
    return entry if holes.fill(entry, texts) == writes else b""


def _remember(memo: FieldMemo, key: Any, writes: bytes, made: bytes | None) -> None:
    memo.misses += 1
    replayed = memo.segment.hits if memo.segment is not None else 0
    if memo.keep and memo.misses >= 256 and memo.hits + memo.aliases + replayed < memo.misses:  # most texts are new
        memo.keep = False
        STOPS[0] += 1
    memo.store(key, writes if made is None else (made, writes))


STOPS = [0]
"""How many field memos stopped remembering (segment memos read their fields' ``keep`` again
when it changed)."""


STANDARD = "^~\\&"
"""Component, repetition, escape and subcomponent characters for which :data:`PLAIN` holds."""

_DIRECT = {
    "string": "text", "markdown": "text", "code": "text", "id": "text", "oid": "text", "uuid": "text",
    "url": "text", "canonical": "text",
    "date": "dtm(text, 'date', tz)", "dateTime": "dtm(text, 'dateTime', tz)", "instant": "dtm(text, 'instant', tz)",
    "decimal": "number(text)", "boolean": "boolean(text)",
    "integer": "whole(number(text))", "positiveInt": "whole(number(text))", "unsignedInt": "whole(number(text))",
}
"""FHIR primitive type → what :func:`engine.builtin` makes of a value that is its own text
(no component, repetition, escape or null in it), as an expression of the stripped ``text``."""

_DIRECTS: dict[tuple[int, tuple[bool, ...] | None], Callable[..., None] | None] = {}


def direct_function(fp: FieldPlan, holds: tuple[bool, ...] | None) -> Callable[..., None] | None:
    """Generated ``direct(text, log, rep_base, tz)`` doing what the rules whose conditions
    held do with a plain field value, when every one of them is a primitive conversion
    (NM → decimal, DTM → dateTime, ST → string) without vocabulary, datatype map or
    resource; ``None`` otherwise (the interpreter runs)."""
    key = (fp.number, holds)
    if key in _DIRECTS:
        return _DIRECTS[key]
    scope: dict[str, Any] = {"number": values.number, "dtm": values.dtm, "boolean": values.boolean,
                             "whole": _whole}
    lines = ["def direct(text, log, rep_base, tz):", "    if not text: return None"]  # blank: nothing, as builtin()
    fn = None
    for j, rule in enumerate(fp.rules):
        if holds is not None and not holds[j]:
            continue
        expression = _DIRECT.get(rule["type"])
        if (expression is None or rule["c"] or rule["ref"] or rule["assign"] is not None or rule["vocab"]
                or (rule["map"] and (datatype_maps().get(rule["map"]) or rule["map"] in primitive_components()))):
            break  # primitive_components: a conversion of another component than the plain text's
        number = writer_number(rule.get("w") or writer_for(rule, ""))
        kind = VALUE_IN_LIST if any(step[2] for step in rule["steps"]) else VALUE  # in a list: may be joined
        scope[f"ITEM{j}"] = (kind, number, 0)  # one object for every such value: shapes are found by identity
        lines += [f"    v = {expression}", "    if v is not None:",
                  f"        if rep_base == 0: log.append(ITEM{j})",
                  f"        else: log.append(({kind}, {number}, rep_base)); log.fresh = True",
                  "        log.values.append(v)"]
        if kind == VALUE_IN_LIST:
            lines.append("        log.plain = False")
    else:
        lines.append("    return None")
        exec("\n".join(lines), scope)  # the source is built above from the compiled tables only
        fn = scope["direct"]
        fn.width = sum(1 for j in range(len(fp.rules)) if f"ITEM{j}" in scope)
    _DIRECTS[key] = fn
    return fn


def compared_texts(fp: FieldPlan, seg_id: str, field: int) -> frozenset[str] | None:
    """The texts the field's conditions compare the first component of ``field`` (of the same
    segment) with, for when that field's text is plain (then it is its own first component
    and the other components are empty); ``None`` when they depend on the text otherwise
    (compared with another value, or renamed by a value alias).

    So for a plain text, which conditions hold depends only on whether it is empty and on
    which of these texts it is, if any (:func:`plain_key`)."""
    if f"{seg_id}-{field}" in config()["value_aliases"]:
        return None
    found: set[str] = set()

    def first(ref: list[Any]) -> bool:
        return ref[0] == seg_id and ref[1] == field and (ref[2] or 1) == 1 and (ref[3] or 1) == 1

    def walk(cond: Any) -> bool:
        op = cond[0]
        if op in ("and", "or"):
            return walk(cond[1]) and walk(cond[2])
        if op in ("eqref", "neref"):
            return not (first(cond[1]) or first(cond[2]))
        if op == "length":  # holds for some plain texts and not others
            return not first(cond[1])
        if first(cond[1]):
            if op in ("eq", "ne"):
                found.add(cond[2])
            elif op in ("in", "not_in"):
                found.update(cond[2])
        return True

    if not all(walk(rule["cond"]) for rule in fp.rules if rule["cond"] is not None):
        return None
    return frozenset(found)


PLAIN_TEXT = "\uffffplain"
"""What a memo key holds for a condition input that is plain text other than the texts compared."""


def plain_key(text: str, compared: frozenset[str], standard: bool) -> str:
    """A condition input as a memo key holds it: a plain text none of the conditions names is
    :data:`PLAIN_TEXT` (they all hold or fail alike for it), anything else is itself."""
    if not text or text in compared or not standard or PLAIN(text) is None:
        return text
    return PLAIN_TEXT


def _whole(n: int | float | None) -> int | None:
    return int(n) if n is not None else None


def _fragment(frozen: Any) -> Any:
    """A value frozen by :func:`engine.freeze` as it goes into a memo entry's JSON."""
    return orjson.Fragment(frozen) if frozen.__class__ is bytes else frozen


def condition_expression(cond: Any, refs: dict[tuple[str, int, int, int], int], scope: dict[str, Any]) -> str:
    """A condition AST as a Python expression over ``v<k>`` (the value of ``refs``' k-th
    reference) and ``c<k>`` (its number of repetitions); value sets are added to ``scope``."""
    op = cond[0]
    if op in ("and", "or"):
        return f"({condition_expression(cond[1], refs, scope)} {op} {condition_expression(cond[2], refs, scope)})"
    k = refs[tuple(cond[1])]
    if op in ("count", "length"):
        if cond[2] not in ("<", ">", "<=", ">="):
            raise ValueError(f"unknown comparison {cond[2]}")
        value = f"c{k}" if op == "count" else f"len(v{k})"
        bound = float(cond[3])  # a count or length is an int: a whole bound is compared as an int
        return f"({value} {cond[2]} {int(bound) if bound.is_integer() else bound!r})"
    if op == "valued":
        return f"bool(v{k})"
    if op == "not_valued":
        return f"(not v{k})"
    if op in ("eq", "ne"):
        return f"(v{k} {'==' if op == 'eq' else '!='} {cond[2]!r})"
    if op in ("in", "not_in"):
        name = f"S{len(scope)}"
        scope[name] = frozenset(cond[2])
        return f"(v{k} {'in' if op == 'in' else 'not in'} {name})"
    if op in ("eqref", "neref"):
        return f"(v{k} {'==' if op == 'eqref' else '!='} v{refs[tuple(cond[2])]})"
    raise ValueError(f"unknown condition operator {op}")


PLAIN = re.compile(r'[^\^~\\&"]+').fullmatch
"""A value that, with the usual delimiters, has no component, repetition, escape or null in it."""


def value_lines(refs: dict[tuple[str, int, int, int], int], seg_id: str, scope: dict[str, Any],
                expressions: str, names: str = "") -> list[str]:
    """Source lines fetching the ``v<k>``/``c<k>`` that ``expressions`` use, for a segment with
    id ``seg_id`` (see :func:`condition_expression`); ``names`` prefixes the names they add to
    ``scope`` (several segments' lines in one function, which sets ``d = None`` first).

    A field value without delimiters, escapes or the explicit null is its own first
    component: it is taken as it is instead of through :func:`ref_value`. A count of
    another segment's field is 0.
    """
    aliases = config()["value_aliases"]
    scope["PLAIN"] = PLAIN
    std = "std = d.component == '^' and d.repetition == '~' and d.escape == '\\\\' and d.subcomponent == '&'"
    lines = ["    fields = seg.fields", "    n = len(fields)"]
    if names:  # the segments of one message share their delimiters: std is worked out again only if not
        lines += ["    if seg.delimiters is not d:", "        d = seg.delimiters", f"        {std}"]
    else:
        lines += ["    d = seg.delimiters", f"    {std}"]
    fetched: set[int] = set()
    for ref, i in refs.items():
        own = ref[0] == seg_id
        if re.search(rf"\bv{i}\b", expressions):
            scope[f"{names}R{i}"] = ref
            slow = f"ref_value(seg, others, {names}R{i})"
            if own:
                f, c, s = ref[1], ref[2] or 1, ref[3] or 1
                if f not in fetched:  # each field once, and whether it is its own first component
                    fetched.add(f)
                    lines += [f"    f{f} = fields[{f}] if n > {f} else ''",
                              f"    p{f} = not f{f} or f{f}.isalnum() or (std and PLAIN(f{f}) is not None)"]
                whole = "''" if c > 1 or s > 1 else f"f{f}"
                alias = aliases.get(f"{ref[0]}-{f}")
                if alias:
                    scope[f"{names}A{i}"] = alias
                    whole = f"{names}A{i}.get({whole}, {whole})"
                lines.append(f"    v{i} = {whole} if p{f} else {slow}")
            else:
                lines.append(f"    v{i} = {slow}")
        if re.search(rf"\bc{i}\b", expressions):
            f = ref[1]
            if not own:
                lines.append(f"    c{i} = 0")
            elif f <= 2 and seg_id in ENVELOPE_SEGMENTS:
                lines.append(f"    c{i} = len(seg.reps({f}))")
            else:  # Segment.reps() counted without splitting
                scope["NULL"] = '""'
                lines += [f"    g{i} = fields[{f}] if n > {f} else ''",
                          f"    c{i} = 0 if not g{i} or g{i} == NULL else g{i}.count(d.repetition) + 1"]
    return lines


_OUTCOMES: dict[tuple[int, str], Callable[[SegmentLike, Callable[[str], SegmentLike | None]], tuple[bool, ...]]] = {}


def outcomes_function(fp: FieldPlan, seg_id: str) -> Callable[[SegmentLike, Callable[[str], SegmentLike | None]], tuple[bool, ...]]:
    """Generated function telling which of the field's rules have their condition met: the
    values the conditions read are fetched once, the conditions are inline expressions."""
    fn = _OUTCOMES.get((fp.number, seg_id))
    if fn is not None:
        return fn
    refs = {ref: i for i, ref in enumerate(fp.deps)}
    scope: dict[str, Any] = {"ref_value": ref_value}
    tests = ", ".join("True" if rule["cond"] is None else condition_expression(rule["cond"], refs, scope)
                      for rule in fp.rules)
    lines = ["def outcomes(seg, others):", *value_lines(refs, seg_id, scope, tests), f"    return ({tests},)"]
    exec("\n".join(lines), scope)  # the source is built above from the compiled tables only
    fn = _OUTCOMES[(fp.number, seg_id)] = scope["outcomes"]
    return fn


def replay_created(hit: tuple[bytes, bytes], log: WriteLog, ctx: Context, rep_base: int) -> None:
    """Do again what a field's rules did before for the same text when they created
    resources: create the same resources, log the same writes."""
    made, writes = hit
    for rtype, rid, body in orjson.loads(made):
        ctx.add_resource(rtype, rid, body)
    log.append((ENTRY, writes, rep_base))
    log.fresh = True


def replay(hit: bytes | tuple[bytes, bytes], log: WriteLog, ctx: Context, rep_base: int) -> None:
    """Do again what a field's rules did before (what the generated functions inline)."""
    if hit.__class__ is bytes:
        log.append((ENTRY, hit, rep_base))
        log.fresh = True
    else:
        replay_created(hit, log, ctx, rep_base)  # type: ignore[arg-type]
