"""Search-parameter elements extracted from parsed resources in Python, one pass per resource.

The store holds each resource as a dict already (it parsed it to validate it),
while DuckDB re-parses the JSON text for every ``json_extract``: with ~40
parameters per type that made indexing cost hundreds of microseconds per
resource. Most SearchParameter expressions are simple navigation (paths,
choice types with ``as``/``ofType``, ``where(resolve() is T)``, ``|``,
``where(system = 'phone')``, ``extension('url')``, ``first()``, and the boolean
``exists() and … != false`` of ``Patient.deceased``), so all of a
type's expressions are compiled into *one generated Python function* with
common sub-paths computed once (``Observation.component`` serves six
parameters). Expressions outside that subset are reported as unsupported and
indexed through the FHIRPath→SQL compiler instead (``store.search_index``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from mapping.fhirpath.ast import Binary, Call, FhirPathError, Literal, Member, Node, TypeOp
from mapping.fhirpath.parser import parse
from mapping.fhirpath.schema import r4_schema
from store.index_rows import VALUES, repeat_rows

Extractor = Callable[[dict[str, Any]], tuple[list[Any], ...]]


class Unsupported(Exception):
    """The expression needs the general FHIRPath compiler."""


@dataclass(frozen=True)
class _Slot:
    """A compiled collection: a local variable holding a list, or a choice not yet narrowed."""

    var: str | None
    ftype: str | None
    choice: tuple[tuple[str, str], ...] | None = None  # (key, type) alternatives of a value[x]
    parent: str | None = None


def _choice_key(name: str, type_name: str) -> str:
    return name + type_name[0].upper() + type_name[1:]


def _type_name(node: Node) -> str:
    if isinstance(node, Member) and node.target is None:
        return node.name
    if isinstance(node, Member) and isinstance(node.target, Member) and node.target.target is None:
        return node.target.name + "." + node.name
    raise Unsupported("type argument")


EMPTY = "[]"
"""A collection known to be empty when the code is generated (an element the resource's shape lacks)."""


class _CodeGen:
    """Compiles the expressions of one resource type into straight-line Python with shared sub-paths.

    With ``present`` (the resource's own keys), the code is specialized to that shape: paths through
    absent elements are empty at generation time, so their lookups, lists and tests are left out and a
    union with an empty side is the other side itself.
    """

    def __init__(self, resource_type: str, present: frozenset[str] | None = None) -> None:
        self.rtype = resource_type
        self.present = present
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.memo: dict[Node, _Slot] = {}
        self.n = 0
        self.filters: dict[str, str] = {}  # variable -> the one it keeps some elements of, in order

    def _new(self, expr: str) -> str:
        if expr == EMPTY or expr.isidentifier():  # nothing to compute, or another name for a variable
            return expr
        self.n += 1
        var = f"v{self.n}"
        self.lines.append(f"    {var} = {expr}")
        return var

    def _const(self, value: Any) -> str:
        name = f"c{len(self.consts)}"
        self.consts[name] = value
        return name

    def _step(self, src: str, key: str) -> str:
        """List of the values under ``key`` of every dict in list ``src`` (arrays flattened).

        A comprehension is a function call; most steps start at the resource itself or at an empty
        list, so those get a plain expression (a copy of the resource's own array: callers own it).
        """
        if src == EMPTY or (src == "root" and self.present is not None and key not in self.present):
            return EMPTY
        if src == "root":
            return f"(z[:] if type(z := r.get({key!r})) is list else [] if z is None else [z])"
        return (
            f"([y for x in {src} if type(x) is dict and (z := x.get({key!r})) is not None "
            f"for y in (z if type(z) is list else (z,))] if {src} else [])"
        )

    def _filter(self, src: str, condition: str) -> str:
        """A variable with the elements of ``src`` meeting ``condition`` (on ``x``)."""
        var = self._new(f"[x for x in {src} if {condition}]")
        self.filters[var] = src
        return var

    def materialize(self, slot: _Slot) -> str:
        if slot.var is not None:
            return slot.var
        assert slot.choice is not None and slot.parent is not None
        return self._new(_concat(self._step(slot.parent, key) for key, _ in slot.choice))

    def compile(self, node: Node) -> _Slot:
        if node in self.memo:
            return self.memo[node]
        slot = self._compile(node)
        self.memo[node] = slot
        return slot

    def _compile(self, node: Node) -> _Slot:
        schema = r4_schema()
        if isinstance(node, Member):
            if node.target is None and node.name == self.rtype:
                return _Slot("root", self.rtype)
            if node.target is None:
                raise Unsupported("member of $this")
            target = self.compile(node.target)
            src = self.materialize(target)
            el = schema.element(target.ftype, node.name)
            if el is not None and el.is_choice:
                return _Slot(None, None, tuple((_choice_key(node.name, t), t) for t in el.types), src)
            ftype = el.types[0] if el is not None and len(el.types) == 1 else None
            return _Slot(self._new(self._step(src, node.name)), ftype)
        if isinstance(node, TypeOp) and node.op == "as":
            return self._narrow(self.compile(node.operand), node.type_name)
        if isinstance(node, Binary) and node.op == "|":
            left = self.materialize(self.compile(node.left))
            right = self.materialize(self.compile(node.right))
            return _Slot(self._new(_concat((left, right))), None)
        if isinstance(node, Binary) and node.op == "and":
            left = self.materialize(self.compile(node.left))
            right = self.materialize(self.compile(node.right))
            return _Slot(self._new(f"{self._const(_and)}({left}, {right})"), "boolean")
        if isinstance(node, Binary) and node.op == "!=" and isinstance(node.right, Literal) \
                and isinstance(node.right.value, bool):
            left = self.materialize(self.compile(node.left))
            return _Slot(self._new(f"{self._const(_not_equal)}({left}, {node.right.value!r})"), "boolean")
        if isinstance(node, Call) and node.target is not None:
            return self._call(node)
        raise Unsupported(type(node).__name__)

    def _narrow(self, slot: _Slot, type_name: str) -> _Slot:
        base = r4_schema().base_type(type_name.split(".")[-1])
        if slot.choice is not None:
            keys = [k for k, t in slot.choice if r4_schema().base_type(t) == base]
            return _Slot(self._new(_concat(self._step(slot.parent, k) for k in keys)), base)
        if slot.ftype is not None and r4_schema().base_type(slot.ftype) == base:
            return slot
        if slot.ftype is None and base in r4_schema().resources:
            src = self.materialize(slot)
            if src == EMPTY:
                return _Slot(EMPTY, base)
            want = self._const(base)
            return _Slot(self._filter(src, f"type(x) is dict and x.get('resourceType') == {want}"), base)
        raise Unsupported(f"as {type_name}")

    def _call(self, node: Call) -> _Slot:
        target = self.compile(node.target)
        args = node.args
        if node.name in ("ofType", "as") and len(args) == 1:
            return self._narrow(target, _type_name(args[0]))
        src = self.materialize(target)
        if src == EMPTY and node.name in ("first", "extension", "where"):
            return _Slot(EMPTY, "Extension" if node.name == "extension" else target.ftype)
        if node.name == "exists" and not args:
            return _Slot(self._new(f"[bool({src})]"), "boolean")
        if node.name == "first" and not args:
            return _Slot(self._new(f"{src}[:1]"), target.ftype)
        if node.name == "extension" and len(args) == 1 and isinstance(args[0], Literal):
            url = self._const(str(args[0].value))
            return _Slot(self._new(
                f"[e for x in {src} if type(x) is dict for e in (x.get('extension') or ()) "
                f"if type(e) is dict and e.get('url') == {url}]"
            ), "Extension")
        if node.name == "where" and len(args) == 1:
            cond = args[0]
            if (
                isinstance(cond, TypeOp) and cond.op == "is" and isinstance(cond.operand, Call)
                and cond.operand.name == "resolve" and cond.operand.target is None
            ):
                name = cond.type_name.split(".")[-1]
                pattern = self._const(re.compile(rf"(?:^|/){re.escape(name)}/[^/]+(?:/_history/[^/]*)?$"))
                return _Slot(self._filter(
                    src, f"type(x) is dict and type(x.get('reference')) is str and {pattern}.search(x['reference'])"
                ), target.ftype)
            if (
                isinstance(cond, Binary) and cond.op == "=" and isinstance(cond.left, Member)
                and cond.left.target is None and isinstance(cond.right, Literal)
            ):
                key, want = cond.left.name, self._const(cond.right.value)
                return _Slot(self._filter(src, f"type(x) is dict and x.get({key!r}) == {want}"), target.ftype)
        raise Unsupported(f"{node.name}()")


def _concat(parts: Iterable[str]) -> str:
    """The expression joining collections, leaving out those known to be empty."""
    return " + ".join(p for p in parts if p != EMPTY) or EMPTY


def _and(left: list[Any], right: list[Any]) -> list[bool]:
    """FHIRPath ``and`` of two collections (empty: unknown; a singleton counts as its truth)."""
    a = bool(left[0]) if left else None
    b = bool(right[0]) if right else None
    if a is False or b is False:
        return [False]
    return [True] if a and b else []


def _not_equal(values: list[Any], literal: bool) -> list[bool]:
    """FHIRPath ``!=`` of a collection and a boolean literal: empty stays empty; a value of
    another type is never equal to a boolean."""
    if not values:
        return []
    if len(values) > 1:
        return [True]
    value = values[0]
    return [not (type(value) is bool and value == literal)]


def _generate(
    resource_type: str, expressions: tuple[str, ...], present: frozenset[str] | None = None
) -> tuple[_CodeGen, list[str | None]]:
    """Straight-line code selecting each expression's elements: the variable holding them (``EMPTY``
    when the shape ``present`` has none), or None for an expression outside the supported subset (its
    lines are left out)."""
    gen = _CodeGen(resource_type, present)
    outputs: list[str | None] = []
    for expr in expressions:
        mark = (len(gen.lines), dict(gen.memo), gen.n, dict(gen.filters))
        try:
            outputs.append(gen.materialize(gen.compile(parse(expr))))
        except (Unsupported, FhirPathError):
            gen.lines = gen.lines[: mark[0]]
            gen.memo, gen.n, gen.filters = mark[1], mark[2], mark[3]
            outputs.append(None)
    return gen, outputs


def _define(gen: _CodeGen, header: str, tail: list[str], namespace: dict[str, Any]) -> Callable[..., Any]:
    body = "\n".join([header, "    root = [r]", *gen.lines, *tail])
    namespace.update(gen.consts)
    exec(compile(body, f"<search extract {gen.rtype}>", "exec"), namespace)  # noqa: S102 - generated from the spec's expressions
    return namespace[header[4 : header.index("(")]]


@cache
def type_extractor(resource_type: str, expressions: tuple[str, ...]) -> tuple[Extractor, tuple[bool, ...]]:
    """One function returning, for a resource, the element list of each supported expression.

    The second value says which of ``expressions`` are supported (in order); the
    function's result holds one list per supported expression.
    """
    gen, outputs = _generate(resource_type, expressions)
    found = [out for out in outputs if out is not None]
    fn = _define(gen, "def extract(r):", [f"    return ({', '.join(found)}{',' if found else ''})"], {})
    return fn, tuple(out is not None for out in outputs)


Sink = Callable[[list[list[Any]], list[Any], int, str, Any], None]
Indexer = Callable[[dict[str, Any], int, Sequence[list[list[Any]]], Any], None]


MAX_SHAPES = 64
"""Shapes (sets of keys) of one resource type given their own indexer; resources of further shapes take
the general one. Bulk data has a handful per type (Synthea: one to four)."""
_MAX_ORDERS = 256  # key orders remembered per type (a shape's keys may come in several orders)


@cache
def type_indexer(
    resource_type: str, targets: tuple[tuple[str, Sink, int, str], ...]
) -> Indexer:
    """One function handing, for a resource, each expression's non-empty element list to its sink.

    ``targets`` holds (expression, sink, column-set number, parameter code); the generated
    ``index(r, i, column_sets, extra)`` calls ``sink(column_sets[n], elements, i, code, extra)``
    in place, so no per-parameter result tuple is built and empty parameters cost one test.
    Unsupported expressions are skipped. A sink's rows must depend only on the elements and ``extra``
    (see :func:`store.index_rows.repeat_rows`).

    Each shape of resource (its set of keys) gets code of its own, generated at its first resource:
    a type has ~30–50 parameters and a resource a handful of elements, so most of the general code
    looks up elements that are not there, and parameters whose paths differ only by absent elements
    (``code`` and ``combo-code`` of an Observation without components) select the same list, whose
    rows are then copied rather than split again.
    """
    by_order: dict[tuple[str, ...], Indexer] = {}
    by_keys: dict[frozenset[str], Indexer] = {}

    @cache
    def general() -> Indexer:
        return _indexer(resource_type, targets, None)

    def shaped(keys: tuple[str, ...]) -> Indexer:
        present = frozenset(keys)
        fn = by_keys.get(present)
        if fn is None:
            if len(by_keys) >= MAX_SHAPES:
                return general()
            fn = by_keys[present] = _indexer(resource_type, targets, present)
        if len(by_order) < _MAX_ORDERS:
            by_order[keys] = fn
        return fn

    def index(r: dict[str, Any], i: int, cols: Sequence[list[list[Any]]], extra: Any) -> None:
        keys = tuple(r)
        (by_order.get(keys) or shaped(keys))(r, i, cols, extra)

    return index


def _indexer(
    resource_type: str, targets: tuple[tuple[str, Sink, int, str], ...], present: frozenset[str] | None
) -> Indexer:
    """The indexer of :func:`type_indexer` for resources with the keys ``present`` (None: any)."""
    gen, outputs = _generate(resource_type, tuple(expr for expr, _, _, _ in targets), present)
    namespace: dict[str, Any] = {"repeat_rows": repeat_rows}
    live = [(k, sink, number, code, out) for k, ((_, sink, number, code), out) in
            enumerate(zip(targets, outputs, strict=True)) if out is not None and out != EMPTY]
    # Targets whose rows may be those of an earlier target into the same table: the same list (always),
    # or a list one of the two keeps some elements of (when they hold as many: ``patient`` and
    # ``subject`` of a resource about a Patient).
    split: dict[tuple[int, Sink], list[tuple[int, str]]] = {}  # (table, sink) -> targets that split
    source: dict[int, tuple[int, str, bool]] = {}  # target -> (earlier target, its list, always)
    for k, sink, number, _, out in live:
        earlier = split.setdefault((number, sink), [])
        same = [(j, prev) for j, prev in earlier if prev == out]
        kept = [(j, prev) for j, prev in earlier if gen.filters.get(out) == prev or gen.filters.get(prev) == out]
        if same or kept:
            j, prev = (same or kept)[0]
            source[k] = (j, prev, bool(same))
        else:
            earlier.append((k, out))
    sources = {j for j, _, _ in source.values()}
    tail: list[str] = []
    for k, sink, number, code, out in live:
        namespace[f"s{k}"] = sink
        call = f"s{k}(cols[{number}], {out}, i, {code!r}, extra)"
        if k in sources:
            size = f"len(cols[{number}][{VALUES}])"
            call = f"b{k} = {size}\n        {call}\n        e{k} = {size}"
        if k in source:
            j, prev, always = source[k]
            again = f"repeat_rows(cols[{number}], b{j}, e{j}, i, {code!r})"
            call = again if always else (
                f"if len({out}) == len({prev}):\n            {again}\n        else:\n            {call}")
        tail.append(f"    if {out}:\n        {call}")
    return _define(gen, "def index(r, i, cols, extra):", tail or ["    return None"], namespace)


def extractor(expression: str, resource_type: str) -> Callable[[dict[str, Any]], list[Any]] | None:
    """Elements one expression selects from a resource, or None when the expression is unsupported."""
    fn, (ok,) = type_extractor(resource_type, (expression,))
    if not ok:
        return None
    return lambda resource: fn(resource)[0]
