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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from mapping.fhirpath.ast import Binary, Call, FhirPathError, Literal, Member, Node, TypeOp
from mapping.fhirpath.parser import parse
from mapping.fhirpath.schema import r4_schema

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


class _CodeGen:
    """Compiles the expressions of one resource type into straight-line Python with shared sub-paths."""

    def __init__(self, resource_type: str) -> None:
        self.rtype = resource_type
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.memo: dict[Node, _Slot] = {}
        self.n = 0

    def _new(self, expr: str) -> str:
        self.n += 1
        var = f"v{self.n}"
        self.lines.append(f"    {var} = {expr}")
        return var

    def _const(self, value: Any) -> str:
        name = f"c{len(self.consts)}"
        self.consts[name] = value
        return name

    @staticmethod
    def _step(src: str, key: str) -> str:
        """List of the values under ``key`` of every dict in list ``src`` (arrays flattened).

        A comprehension is a function call; most steps start at the resource itself or at an empty
        list, so those get a plain expression (a copy of the resource's own array: callers own it).
        """
        if src == "root":
            return f"(z[:] if type(z := r.get({key!r})) is list else [] if z is None else [z])"
        return (
            f"([y for x in {src} if type(x) is dict and (z := x.get({key!r})) is not None "
            f"for y in (z if type(z) is list else (z,))] if {src} else [])"
        )

    def materialize(self, slot: _Slot) -> str:
        if slot.var is not None:
            return slot.var
        assert slot.choice is not None and slot.parent is not None
        parts = [self._step(slot.parent, key) for key, _ in slot.choice]
        return self._new(" + ".join(parts) if parts else "[]")

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
            return _Slot(self._new(f"{left} + {right}"), None)
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
            return _Slot(self._new(" + ".join(self._step(slot.parent, k) for k in keys) if keys else "[]"), base)
        if slot.ftype is not None and r4_schema().base_type(slot.ftype) == base:
            return slot
        if slot.ftype is None and base in r4_schema().resources:
            src = self.materialize(slot)
            want = self._const(base)
            return _Slot(self._new(f"[x for x in {src} if type(x) is dict and x.get('resourceType') == {want}]"), base)
        raise Unsupported(f"as {type_name}")

    def _call(self, node: Call) -> _Slot:
        target = self.compile(node.target)
        args = node.args
        if node.name in ("ofType", "as") and len(args) == 1:
            return self._narrow(target, _type_name(args[0]))
        src = self.materialize(target)
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
                return _Slot(self._new(
                    f"[x for x in {src} if type(x) is dict and type(x.get('reference')) is str "
                    f"and {pattern}.search(x['reference'])]"
                ), target.ftype)
            if (
                isinstance(cond, Binary) and cond.op == "=" and isinstance(cond.left, Member)
                and cond.left.target is None and isinstance(cond.right, Literal)
            ):
                key, want = cond.left.name, self._const(cond.right.value)
                return _Slot(self._new(
                    f"[x for x in {src} if type(x) is dict and x.get({key!r}) == {want}]"
                ), target.ftype)
        raise Unsupported(f"{node.name}()")


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


def _generate(resource_type: str, expressions: tuple[str, ...]) -> tuple[_CodeGen, list[str | None]]:
    """Straight-line code selecting each expression's elements: the variable holding them, or None
    for an expression outside the supported subset (its lines are left out)."""
    gen = _CodeGen(resource_type)
    outputs: list[str | None] = []
    for expr in expressions:
        mark = (len(gen.lines), dict(gen.memo), gen.n)
        try:
            outputs.append(gen.materialize(gen.compile(parse(expr))))
        except (Unsupported, FhirPathError):
            gen.lines = gen.lines[: mark[0]]
            gen.memo, gen.n = mark[1], mark[2]
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


@cache
def type_indexer(
    resource_type: str, targets: tuple[tuple[str, Sink, int, str], ...]
) -> Indexer:
    """One function handing, for a resource, each expression's non-empty element list to its sink.

    ``targets`` holds (expression, sink, column-set number, parameter code); the generated
    ``index(r, i, column_sets, extra)`` calls ``sink(column_sets[n], elements, i, code, extra)``
    in place, so no per-parameter result tuple is built and empty parameters cost one test.
    Unsupported expressions are skipped.
    """
    gen, outputs = _generate(resource_type, tuple(expr for expr, _, _, _ in targets))
    namespace: dict[str, Any] = {}
    tail: list[str] = []
    for k, ((_, sink, number, code), out) in enumerate(zip(targets, outputs, strict=True)):
        if out is not None:
            namespace[f"s{k}"] = sink
            tail.append(f"    if {out}:\n        s{k}(cols[{number}], {out}, i, {code!r}, extra)")
    return _define(gen, "def index(r, i, cols, extra):", tail or ["    return None"], namespace)


def extractor(expression: str, resource_type: str) -> Callable[[dict[str, Any]], list[Any]] | None:
    """Elements one expression selects from a resource, or None when the expression is unsupported."""
    fn, (ok,) = type_extractor(resource_type, (expression,))
    if not ok:
        return None
    return lambda resource: fn(resource)[0]
