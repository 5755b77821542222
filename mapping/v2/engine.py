"""Building blocks of the mapping: value conversions, datatype maps, path writers and the
resource tree (``Node``/``Slots``) with its finishing pass.

A rule says: take v2 field (or component) N, optionally only if a condition holds,
convert it through a datatype map / vocabulary / literal assignment, and put it at a
FHIR path such as ``identifier[2].type.coding.code``. The ``[k]`` slot numbers of
the IG group rules that build the same element together; repetitions of a v2 field
become separate elements of the first list on the path. Values are written "first
rule wins", which is how the IG's alternative rows for one target are meant.

Segments are consumed through a small protocol (``id``, ``reps``, ``get``,
``delimiters``) so this package does not depend on a particular parser. Segment maps are
run by generated functions (``segment_functions``) over field plans (``field_rules``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import orjson

from mapping.v2 import values
from mapping.v2.tables import (
    config,
    datatype_maps,
    primitive_components,
    required_children,
    segment_maps,
    vocabularies,
)

NULL = '""'
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
TEXT_TYPES = frozenset({"ST", "TX", "FT", "varies"})
QUANTITY_TYPES = frozenset({"Quantity", "SimpleQuantity", "Duration", "Age", "Distance", "Count", "MoneyQuantity"})
JOINED_TEXT_MAPS = frozenset({"XPN", "XAD", "XCN", "XON", "FN", "CX", "PL"})
"""Datatypes whose conversion to a FHIR ``string`` joins all their parts into one text."""
MARK = "\uffff"
"""Delimits the placeholders of templates and masked field texts (a noncharacter: senders do not use it)."""


class DelimitersLike(Protocol):
    field: str
    repetition: str
    component: str
    subcomponent: str
    escape: str
    truncation: str

    def unescape(self, value: str) -> str: ...


class SegmentLike(Protocol):
    """What the mapper needs from a parsed segment."""

    id: str
    seq: int

    @property
    def delimiters(self) -> DelimitersLike: ...

    @property
    def raw(self) -> str: ...

    @property
    def fields(self) -> list[str]: ...

    def reps(self, n: int) -> list[str]: ...

    def get(self, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str: ...


class Slots(dict):
    """A FHIR list under construction: ``(slot, repetition)`` → element."""


class Node(dict):
    """A FHIR element under construction (plain dicts are finished values)."""


@dataclass(slots=True)
class Ref:
    """A reference resolved after ids are known (target is an instance or ``Type/id``)."""

    target: Any
    display: str | None = None


@dataclass
class Context:
    """Per-message state the rules need: offsets, resources made from datatypes, notes.

    It holds no callbacks into the message mapper: a reference cycle would keep every
    message's working tree alive until the cyclic garbage collector ran, and collecting
    those trees cost more than mapping them.
    """

    default_tz: str | None
    emit: frozenset[str]
    delimiters: str = "|^~\\&"
    """The message's delimiters as one string: part of every memo key (ids of parser objects
    would be reused by later messages)."""
    notes: list[str] = field(default_factory=list)
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    memos: Any = None
    """The field memos for this message's delimiters and time zone (``field_rules.memo_table``)."""
    created: list[tuple[str, str, Any]] | None = None
    """While a field's rules run: the resources they create (type, id, frozen body), so
    the field memo can replay the creation along with the writes."""

    def make_resource(self, rtype: str, body: dict[str, Any]) -> dict[str, str] | None:
        """A resource referenced from a datatype (Practitioner from XCN, Location from PL),
        identified by its identifier or name; the reference to it."""
        if rtype not in self.emit or not body:
            return None
        body = clone(body)
        prune(body, rtype)
        key = identifier_key(body, rtype) or name_key(body)
        if not key:
            return None
        rid = stable_id(rtype, key)
        if self.created is not None:
            self.created.append((rtype, rid, freeze(body)))
        self.add_resource(rtype, rid, body)
        return {"reference": f"{rtype}/{rid}"}

    def add_resource(self, rtype: str, rid: str, body: dict[str, Any]) -> None:
        existing = self.resources.get((rtype, rid))
        if existing is None:
            self.resources[(rtype, rid)] = {"resourceType": rtype, "id": rid, **body}
        else:
            merge(existing, body)


# --- value access -------------------------------------------------------------------


def split(raw: str, level: int, d: DelimitersLike) -> list[str]:
    """Parts of a value: level 0 (field repetition) splits on ^, level 1 (component) on &."""
    if level == 0:
        return raw.split(d.component)
    if level == 1:
        return raw.split(d.subcomponent)
    return [raw]


def leaf(raw: str, level: int, d: DelimitersLike) -> str:
    """The first atomic value of ``raw`` (CWE.1 of a CWE, HD.1 of an HD), unescaped."""
    if level == 0 and d.component in raw:
        raw = raw.split(d.component, 1)[0]
    if level <= 1 and d.subcomponent in raw:
        raw = raw.split(d.subcomponent, 1)[0]
    if raw == NULL:
        return ""
    return d.unescape(raw) if d.escape in raw else raw


def joined_text(raw: str, level: int, d: DelimitersLike) -> str:
    """All non-empty atomic parts joined by spaces (XPN → "Jones William A")."""
    if level >= 2:
        return leaf(raw, level, d)
    return " ".join(t for t in (joined_text(p, level + 1, d).strip() for p in split(raw, level, d)) if t)


# --- conditions --------------------------------------------------------------------


def eval_cond(cond: Any, lookup: Callable[[list[Any]], str], count: Callable[[list[Any]], int]) -> bool:
    op = cond[0]
    if op == "and":
        return eval_cond(cond[1], lookup, count) and eval_cond(cond[2], lookup, count)
    if op == "or":
        return eval_cond(cond[1], lookup, count) or eval_cond(cond[2], lookup, count)
    if op in ("count", "length"):
        n = count(cond[1]) if op == "count" else len(lookup(cond[1]))
        limit = cond[3]
        return {"<": n < limit, ">": n > limit, "<=": n <= limit, ">=": n >= limit}[cond[2]]
    value = lookup(cond[1])
    if op == "valued":
        return bool(value)
    if op == "not_valued":
        return not value
    if op == "eq":
        return value == cond[2]
    if op == "ne":
        return value != cond[2]
    if op == "in":
        return value in cond[2]
    if op == "not_in":
        return value not in cond[2]
    if op == "eqref":
        return value == lookup(cond[2])
    if op == "neref":
        return value != lookup(cond[2])
    raise ValueError(f"unknown condition operator {op}")


def ref_value(seg: SegmentLike, others: Callable[[str], SegmentLike | None], ref: tuple[str, int, int, int]) -> str:
    """The first value at ``SEG-f.c.s`` as a condition sees it: of ``seg`` itself or of the
    message's first segment with that id; the explicit null reads as empty; aliases applied."""
    seg_id, f, c, s = ref
    target = seg if seg_id == seg.id else others(seg_id)
    if target is None:
        return ""
    v = target.get(f, 1, c or 1, s or 1)
    if v == NULL:
        return ""
    alias = config()["value_aliases"].get(f"{seg_id}-{f}")
    return alias.get(v, v) if alias else v


# --- building ----------------------------------------------------------------------


Writer = Callable[[dict[str, Any], Any, int], None]


@cache
def writer(steps: tuple[tuple[Any, ...], ...]) -> Writer:
    """The straight-line function that writes a value at one path, unless something is
    already there (first rule wins). A choice step (``collectedDateTime``) is not written
    when a sibling variant (``collectedPeriod``) is already there: FHIR allows one ``x[x]``.

    Generated once per distinct path of the tables: the walk over steps, the list-slot
    keys and the choice checks become constants, so a write costs a few dict operations.
    """
    lines = ["def w(cur, value, rep):"]
    if not steps:
        lines.append("    if isinstance(value, dict): merge(cur, value)")
    rep_pending = True
    last = len(steps) - 1
    for i, step in enumerate(steps):
        name, slot, is_array = step[0], step[1], step[2]
        if len(step) > 3:
            base = step[3]
            lines += [f"    if {name!r} not in cur:",
                      "        for key in cur:",
                      f"            if key.startswith({base!r}) and key[{len(base)}:{len(base) + 1}].isupper(): return"]
        if is_array:
            key = f"({slot!r}, rep)" if rep_pending else f"({slot!r}, 0)"
            rep_pending = False
            lines += [f"    s = cur.get({name!r})",
                      f"    if s.__class__ is not Slots: s = cur[{name!r}] = Slots()",
                      f"    k = {key}"]
            if i == last:
                lines += ["    ex = s.get(k)",
                          "    if ex is None: s[k] = value",
                          "    elif isinstance(ex, dict) and isinstance(value, dict): merge(ex, value)"]
            else:
                lines += ["    nxt = s.get(k)",
                          "    if nxt.__class__ is not Node: nxt = s[k] = Node(nxt) if isinstance(nxt, dict) else Node()",
                          "    cur = nxt"]
        elif i == last:
            lines += [f"    ex = cur.get({name!r})",
                      f"    if ex is None: cur[{name!r}] = value",
                      "    elif isinstance(ex, dict) and isinstance(value, dict): merge(ex, value)"]
        else:
            lines += [f"    nxt = cur.get({name!r})",
                      f"    if nxt.__class__ is not Node: nxt = cur[{name!r}] = Node(nxt) if isinstance(nxt, dict) else Node()",
                      "    cur = nxt"]
    scope: dict[str, Any] = {"Slots": Slots, "Node": Node, "merge": merge}
    exec("\n".join(lines), scope)  # the source is built above from the compiled tables only
    return scope["w"]


def _has_variant(node: dict[str, Any], base: str) -> bool:
    """True when ``node`` already holds some ``base[x]`` (``valueString`` for ``value``)."""
    n = len(base)
    return any(k.startswith(base) and k[n:n + 1].isupper() for k in node)


@cache
def choice_bases() -> dict[str, str]:
    """Every choice element name the tables write (``collectedPeriod``) → its base (``collected``)."""
    return {
        step[0]: step[3]
        for maps in (segment_maps(), datatype_maps())
        for rules in maps.values()
        for rule in rules
        for step in rule["steps"]
        if len(step) > 3
    }


def merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Add what ``into`` lacks from ``other`` (first wins), never a second ``x[x]`` variant."""
    choices = choice_bases()
    for k, v in other.items():
        cur = into.get(k)
        if cur is None:
            base = choices.get(k)
            if base is None or not _has_variant(into, base):
                into[k] = v
        elif isinstance(cur, dict) and not isinstance(cur, Slots) and isinstance(v, dict):
            merge(cur, v)
        elif isinstance(cur, Slots) and isinstance(v, Slots):
            for sk, sv in v.items():
                if sk not in cur:
                    cur[sk] = sv
        elif isinstance(cur, Slots) and isinstance(v, list):
            for i, sv in enumerate(v):
                cur.setdefault((SHEET_STRIDE + i, 0), sv)


SHEET_STRIDE = 1_000_000
"""List offset between segment maps feeding one resource (see ``messages._Instance.base_of``)."""


def _compatible(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when ``b`` adds to ``a`` without contradicting it (no differing leaf, no second x[x])."""
    choices = choice_bases()
    for k, vb in b.items():
        va = a.get(k)
        if va is None:
            base = choices.get(k)
            if base is not None and _has_variant(a, base):
                return False
        elif isinstance(va, dict) and isinstance(vb, dict):
            if not _compatible(va, vb):
                return False
        elif va != vb:
            return False
    return True


def _combine(a: dict[str, Any], b: dict[str, Any]) -> None:
    for k, vb in b.items():
        va = a.get(k)
        if va is None:
            a[k] = vb
        elif isinstance(va, dict) and isinstance(vb, dict):
            _combine(va, vb)


def finalize(value: Any, resolve: Callable[[Ref], dict[str, Any] | None]) -> Any:
    """Slots → lists, Ref → Reference, and drop what ended up empty."""
    cls = value.__class__
    if cls is Node:
        return _finalize_node(value, resolve)
    if cls is Slots:
        return _finalize_slots(value, resolve)
    if cls is Ref:
        return resolve(value)
    return value  # scalars and finished values from a conversion


def _finalize_node(value: Node, resolve: Callable[[Ref], dict[str, Any] | None]) -> dict[str, Any] | None:
    out = {}
    for k, v in value.items():
        cls = v.__class__
        if cls is Node:
            fv = _finalize_node(v, resolve)
        elif cls is Slots:
            fv = _finalize_slots(v, resolve)
        elif cls is Ref:
            fv = resolve(v)
        else:
            fv = v
        if fv is None or (fv.__class__ in _SIZED and not fv):
            continue
        if k == "extension":
            fv = [e for e in fv if isinstance(e, dict) and "url" in e and len(e) > 1] or None
            if fv is None:
                continue
        out[k] = fv
    return out or None


_SIZED = frozenset({str, dict, list})
"""Finished values that are dropped when empty."""


EACH_SHARED = 0
"""List slot of what every element of an IG ``[each]`` list shares (``build_tables.EACH_SHARED``):
OBX-3's code in each ``Observation.component`` made from an OBX-5 repetition."""


def _finalize_slots(value: Slots, resolve: Callable[[Ref], dict[str, Any] | None]) -> list[Any] | None:
    if len(value) == 1:
        for k, v in value.items():
            if k[0] == EACH_SHARED:
                return None  # shared by each element, and there is none
            v = finalize(v, resolve)
            return None if v is None or (v.__class__ in _SIZED and not v) else [v]
    out: list[Any] = []
    numbered: dict[tuple[int, int], list[dict[str, Any]]] = {}
    shared: dict[str, Any] | None = None
    for k in sorted(value):  # the shared slot sorts first
        v = finalize(value[k], resolve)
        if k[0] == EACH_SHARED:
            if isinstance(v, dict):
                shared = v if shared is None else {**v, **shared}
            continue
        if shared is not None and isinstance(v, dict):
            merge(v, clone(shared))
        if v is None or (v.__class__ in _SIZED and not v) or v in out:
            continue
        if isinstance(v, dict):
            alike = numbered.setdefault((k[0], k[1] % SHEET_STRIDE), [])  # same number, other sheets
            into = next((a for a in alike if _compatible(a, v)), None)
            if into is not None:
                _combine(into, v)
                continue
            alike.append(v)
        out.append(v)
    return out or None


def _apply_vocab(result: Any, vocab: str | None, text: str, fhir_type: str) -> Any:
    if not vocab:
        return result
    table = vocabularies().get(vocab)
    if table is None:
        return result
    hit = table.get(text)
    if fhir_type == "code":
        return hit[0] if hit else None
    if hit is None:
        return result
    coding = {k: v for k, v in (("system", hit[2]), ("code", hit[0]), ("display", hit[1])) if v}
    if fhir_type == "Coding":
        return coding
    if fhir_type == "CodeableConcept":
        cc = result if isinstance(result, dict) else {}
        codings = cc.get("coding") or []
        if isinstance(codings, Slots):
            codings = [codings[k] for k in sorted(codings)]
        original = [c for c in codings if c.get("system") and c.get("system") != coding.get("system")]
        cc = dict(cc)
        cc["coding"] = [coding, *original]
        return cc
    return result


def _hd_uri(raw: str, level: int, d: DelimitersLike) -> str | None:
    parts = split(raw, level, d)
    namespace = leaf(parts[0], level + 1, d) if parts else ""
    universal = leaf(parts[1], level + 1, d) if len(parts) > 1 else ""
    if universal:
        return values.system_uri(universal)
    return values.system_uri(namespace) if namespace else None


def _sampled_data(raw: str, level: int, d: DelimitersLike) -> dict[str, Any] | None:
    """NA (numeric array) → SampledData. v2 carries neither origin nor sampling period,
    so they are written as 0: the samples are kept, their timing is unknown."""
    samples = [leaf(p, level + 1, d) for p in split(raw, level, d)]
    if not any(samples):
        return None
    data = " ".join(s if values.number(s) is not None else "E" for s in samples)
    return {"origin": {"value": 0}, "period": 0, "dimensions": 1, "data": data}


def builtin(
    fhir_type: str, mapname: str | None, raw: str, level: int, d: DelimitersLike, ctx: Context, v2type: str | None
) -> Any:
    """Conversion for targets the tables leave to code (primitives, HD → uri, text codes)."""
    if mapname and mapname.startswith("HD[") and fhir_type == "uri":
        return _hd_uri(raw, level, d)
    if mapname == "NA[SampledData]":
        return _sampled_data(raw, level, d)
    component = primitive_components().get(mapname) if mapname else None
    if component is not None:
        parts = split(raw, level, d)
        raw, level = (parts[component - 1] if len(parts) >= component else ""), level + 1
    text = leaf(raw, level, d).strip()  # v2 pads; FHIR codes, ids and dates may not
    if not text:
        return None
    if fhir_type in ("string", "markdown"):
        if mapname and mapname.split("[")[0] in JOINED_TEXT_MAPS:
            return joined_text(raw, level, d)
        return text
    if fhir_type == "code":
        return text
    if fhir_type == "uri":
        return values.system_uri(text) if v2type in ("ID", "IS", None) else text
    if fhir_type in ("date", "dateTime", "instant"):
        return values.dtm(text, fhir_type, ctx.default_tz)
    if fhir_type == "decimal":
        return values.number(text)
    if fhir_type in ("integer", "positiveInt", "unsignedInt"):
        n = values.number(text)
        return int(n) if n is not None else None
    if fhir_type == "boolean":
        return values.boolean(text)
    if fhir_type == "time":
        digits = "".join(ch for ch in text if ch.isdigit())[:6].ljust(6, "0")
        return f"{digits[:2]}:{digits[2:4]}:{digits[4:6]}"
    if fhir_type == "base64Binary":
        if v2type in TEXT_TYPES:
            return base64.b64encode(text.encode()).decode("ascii")
        packed = "".join(text.split())
        return packed if len(packed) % 4 == 0 and _BASE64.match(packed) else None
    if fhir_type in ("id", "oid", "uuid", "url", "canonical", "base64Binary"):
        return text
    if fhir_type in ("CodeableConcept", "Coding"):
        parts = split(raw, level, d)
        coding = {"code": text}
        display = leaf(parts[1], level + 1, d).strip() if len(parts) > 1 else ""
        system = leaf(parts[2], level + 1, d).strip() if len(parts) > 2 else ""
        if display:
            coding["display"] = display
        if system:
            coding["system"] = values.system_uri(system)
        return coding if fhir_type == "Coding" else {"coding": [coding]}
    if fhir_type in QUANTITY_TYPES:
        n = values.number(text)
        return {"value": n} if n is not None else None
    return None


CONVERSIONS: dict[tuple[int, str, int, int, str | None], Any] = {}
"""Results of pure conversions by rule, text, level, delimiters and time zone (see :func:`convert`)."""
MEMO_LIMIT = 100_000
_MISS = object()
_loads = orjson.loads


def clone(value: Any) -> Any:
    """Copy of a JSON-like value (memoized results must not be shared between resources)."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def freeze(value: Any) -> Any:
    """A memo entry: containers as JSON bytes, because ``orjson.loads`` copies them several
    times faster than walking them in Python; scalars as they are."""
    if isinstance(value, dict | list):
        try:
            return orjson.dumps(value)
        except TypeError:  # an integer beyond 64 bits: keep the object, copy it by walking
            return value
    return value


def thaw(value: Any) -> Any:
    """A fresh copy of a memo entry made by :func:`freeze`."""
    cls = value.__class__
    if cls is bytes:
        return orjson.loads(value)
    if cls is dict or cls is list:
        return clone(value)
    return value


def convert(rule: dict[str, Any], raw: str, level: int, d: DelimitersLike, ctx: Context,
            remember: bool = True) -> Any:
    """One rule's FHIR value for one v2 value, or ``None``.

    Conversions that create no resource are pure functions of the v2 text, so they are
    memoized: codes, units, facilities and timestamps repeat across a feed. A caller
    that remembers the result itself (a whole field, in the field memo) passes
    ``remember=False``.
    """
    if remember and rule.get("pure"):
        key = (id(rule), raw, level, ctx.delimiters, ctx.default_tz)
        hit = CONVERSIONS.get(key, _MISS)
        if hit is _MISS:
            value = _convert(rule, raw, level, d, ctx)
            if len(CONVERSIONS) >= MEMO_LIMIT:
                CONVERSIONS.clear()
            CONVERSIONS[key] = freeze(value)
            return value
        return thaw(hit)
    return _convert(rule, raw, level, d, ctx)


def _convert(rule: dict[str, Any], raw: str, level: int, d: DelimitersLike, ctx: Context) -> Any:
    fhir_type = rule["type"] or "string"
    mapname = rule["map"]
    if rule["ref"]:
        built = apply_datatype(mapname, raw, level, d, ctx) if mapname else None
        return ctx.make_resource(rule["ref"], built) if built else None
    if rule["assign"] is not None:
        if fhir_type == "boolean":
            return rule["assign"] == "true"
        return rule["assign"]
    rules = datatype_maps().get(mapname) if mapname else None
    if rules:
        result = apply_datatype(mapname, raw, level, d, ctx)
    else:
        result = builtin(fhir_type, mapname, raw, level, d, ctx, rule.get("dt"))
    if rule["vocab"]:  # a code looks up what it converted (MSG[code]: the trigger event, not the first component)
        text = result if fhir_type == "code" and isinstance(result, str) else leaf(raw, level, d).strip()
        result = _apply_vocab(result, rule["vocab"], text, fhir_type)
    if fhir_type in QUANTITY_TYPES and isinstance(result, dict):
        result = values.normalize_quantity(result)
    return result


def _place(node: dict[str, Any], rule: dict[str, Any], value: Any, rep: int) -> None:
    """Write a rule's value (see :func:`_writer_for`)."""
    writer_for(rule, value)(node, value, rep)


def writer_for(rule: dict[str, Any], value: Any) -> Writer:
    """The writer for a rule's value; a datatype map that built the *parent* merges into it.

    The IG writes ``XPN.1 → family`` with map ``FN[HumanName]``: the FN map fills
    the HumanName itself, so its result belongs one level up.
    """
    w = rule.get("w")
    if w is None:
        w = _writers(rule)
    if value.__class__ is dict and rule["prim"]:
        return rule["wp"] or _merge_here
    return w


def _writers(rule: dict[str, Any]) -> Writer:
    """Attach the rule's writers: to its path, and to the parent for values built one level up."""
    steps = tuple(tuple(step) for step in rule["steps"])
    rule["prim"] = rule["type"] in values.PRIMITIVE_TYPES
    rule["wp"] = writer(steps[:-1]) if len(steps) > 1 else None
    w = rule["w"] = writer(steps)
    return w


def _merge_here(node: dict[str, Any], value: dict[str, Any], _rep: int) -> None:
    merge(node, value)


def apply_datatype(mapname: str, raw: str, level: int, d: DelimitersLike, ctx: Context) -> Any:
    """Build a FHIR datatype value from a composite v2 value with a datatype map."""
    rules = datatype_maps().get(mapname)
    if rules and "pure" not in rules[0]:
        pure_map(mapname)
    if not rules:
        target = mapname.split("[", 1)[1].rstrip("]") if "[" in mapname else "string"
        return builtin(target, mapname, raw, level, d, ctx, None)
    parts = split(raw, level, d)
    sub_level = level + 1

    def part(comp: int, sub: int) -> str:
        if comp > len(parts):
            return ""
        p = parts[comp - 1]
        if sub:
            subs = split(p, sub_level, d)
            return subs[sub - 1] if sub <= len(subs) else ""
        return p

    def lookup(ref: list[Any]) -> str:
        return leaf(part(ref[1], ref[2]), sub_level + (1 if ref[2] else 0), d)

    node: dict[str, Any] = Node()
    for rule in rules:
        praw = part(rule["f"], rule["c"])
        plevel = sub_level + (1 if rule["c"] else 0)
        if not leaf(praw, plevel, d) and not rule.get("when_empty"):
            continue
        if rule["cond"] is not None and not eval_cond(rule["cond"], lookup, lambda _r: 1):
            continue
        concat = rule.get("concat")
        if concat is not None:  # "+"+XTN.5+" "+XTN.6+" "+XTN.7
            _place(node, rule, "".join(p if p.__class__ is str else lookup(["", *p]).strip() for p in concat), 0)
            continue
        value = convert(rule, praw, plevel, d, ctx)
        if value is None:
            continue
        _place(node, rule, value, 0)
    return finalize(node, _unresolvable) if node else None


def _unresolvable(ref: Ref) -> None:
    raise ValueError(f"datatype values reference resources by id only, got {ref!r}")


@cache
def pure_map(mapname: str) -> bool:
    rules = datatype_maps().get(mapname) or []
    for rule in rules:
        rule["pure"] = not rule["ref"] and (not rule["map"] or rule["map"] == mapname or pure_map(rule["map"]))
    return all(r["pure"] for r in rules)


def has_element(item: dict[str, Any], name: str) -> bool:
    """True when ``item`` holds ``name`` itself or one of its ``name[x]`` variants."""
    if name in item:
        return True
    n = len(name)
    return any(k.startswith(name) and k[n:n + 1].isupper() for k in item)


def missing_required(body: dict[str, Any], rtype: str) -> list[str]:
    """Top-level elements R4 requires of ``rtype`` that ``body`` lacks."""
    req, _ = required_children()
    return [kid for kid in req.get(rtype, ()) if not has_element(body, kid)]


def prune(body: dict[str, Any], path: str) -> None:
    """Drop list elements missing children FHIR requires (an Encounter.location with no
    location): the IG maps some parts of an element but not the mandatory one."""
    req, prefixes = required_children()
    if path not in prefixes:
        return
    for key in list(body):
        p = f"{path}.{key}"
        if p not in prefixes and p not in req:
            continue
        val = body[key]
        items = val if isinstance(val, list) else [val]
        kids = req.get(p)
        if kids:
            items = [it for it in items if isinstance(it, dict) and all(has_element(it, kid) for kid in kids)]
        for it in items:
            if isinstance(it, dict) and p in prefixes:
                prune(it, p)
        if not items:
            del body[key]
        else:
            body[key] = items if isinstance(val, list) else items[0]


def identifier_key(body: dict[str, Any], rtype: str) -> str:
    """``system|value`` of the identifier an id recipe reads: the first valued one of a type
    preferred for ``rtype`` (``config.json`` → ``preferred_identifier_types``: a Patient's
    medical record number, CX.5 MR), else the first valued one. So PID-3 sent as SSN~MRN or
    MRN~SSN gives one Patient id."""
    ids = body.get("identifier")
    if isinstance(ids, dict):
        ids = [ids]
    chosen = None
    preferred = _preferred_identifier_types(rtype)
    for ident in ids or []:
        if not ident.get("value"):
            continue
        if chosen is None:
            chosen = ident
        coding = (ident.get("type") or {}).get("coding") or [{}]
        if coding[0].get("code") in preferred:
            chosen = ident
            break
    return f"{chosen.get('system', '')}|{chosen['value']}" if chosen is not None else ""


@cache
def _preferred_identifier_types(rtype: str) -> frozenset[str]:
    return frozenset(config()["preferred_identifier_types"].get(rtype, ()))


def name_key(body: dict[str, Any]) -> str:
    name = body.get("name")
    if isinstance(name, list):
        name = name[0] if name else None
    if isinstance(name, dict):
        return "|".join([name.get("family", ""), *name.get("given", [])])
    return name or ""


ID_SEPARATOR = "\x1f"
"""Between the type and each part of a resource id's text (US)."""


def stable_id(resource_type: str, *parts: str) -> str:
    """Deterministic resource id: same source record, same id, on every replay."""
    return stable_digest(ID_SEPARATOR.join((resource_type, *parts)))


def stable_digest(text: str) -> str:
    """The id of a resource id's text (the type and its parts joined by :data:`ID_SEPARATOR`)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
