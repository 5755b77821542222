"""Search-parameter elements extracted from parsed resources in Python, one pass per resource.

The store has each resource as a dict already (it parsed it to validate it),
while DuckDB re-parses the JSON text for every ``json_extract``: with ~40
parameters per type that made indexing cost hundreds of microseconds per
resource. Most SearchParameter expressions are simple navigation (paths,
choice types with ``as``/``ofType``, ``where(resolve() is T)``, ``|``,
``where(system = 'phone')``, ``extension('url')``), so they are compiled here
into small Python functions over the dict. Expressions outside that subset are
reported as unsupported and indexed by the FHIRPath→SQL compiler instead
(``store.search_index``), so every parameter is still covered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

from mapping.fhirpath.ast import Binary, Call, FhirPathError, Literal, Member, Node, TypeOp
from mapping.fhirpath.parser import parse
from mapping.fhirpath.schema import r4_schema

Items = list[tuple[Any, str | None]]  # (value, FHIR type if known)
Step = Callable[[Items], Items]


class Unsupported(Exception):
    """The expression needs the general FHIRPath compiler."""


def _choice_key(name: str, type_name: str) -> str:
    return name + type_name[0].upper() + type_name[1:]


@cache
def _navigation(ftype: str | None, name: str) -> tuple[tuple[tuple[str, str], ...] | None, str | None]:
    """How to step to ``name`` from a value of ``ftype``: choice keys with their types, else the child type."""
    el = r4_schema().element(ftype, name)
    if el is not None and el.is_choice:
        return tuple((_choice_key(name, t), t) for t in el.types), None
    return None, (el.types[0] if el is not None and len(el.types) == 1 else None)


def _member(name: str) -> Step:
    def step(items: Items) -> Items:
        out: Items = []
        for value, ftype in items:
            if not isinstance(value, dict):
                continue
            choices, child_type = _navigation(ftype, name)
            if choices is not None:
                for key, t in choices:
                    v = value.get(key)
                    if v is not None:
                        if isinstance(v, list):
                            out.extend((x, t) for x in v)
                        else:
                            out.append((v, t))
                continue
            v = value.get(name)
            if v is None:
                continue
            if isinstance(v, list):
                out.extend((x, child_type) for x in v)
            else:
                out.append((v, child_type))
        return out

    return step


def _as_type(type_name: str) -> Step:
    """Keep items of one type (choice alternatives are typed by the key they came from)."""
    base = r4_schema().base_type(type_name.split(".")[-1])

    def step(items: Items) -> Items:
        out: Items = []
        for value, ftype in items:
            if ftype is not None:
                if r4_schema().base_type(ftype) == base or ftype == type_name:
                    out.append((value, ftype))
            elif isinstance(value, dict) and value.get("resourceType") == base:
                out.append((value, base))
        return out

    return step


def _where_resolve_is(type_name: str) -> Step:
    pattern = re.compile(rf"(?:^|/){re.escape(type_name)}/[^/]+(?:/_history/[^/]*)?$")

    def step(items: Items) -> Items:
        return [
            (v, t) for v, t in items
            if isinstance(v, dict) and isinstance(v.get("reference"), str) and pattern.search(v["reference"])
        ]

    return step


def _where_equals(name: str, literal: object) -> Step:
    def step(items: Items) -> Items:
        return [(v, t) for v, t in items if isinstance(v, dict) and v.get(name) == literal]

    return step


def _extension(url: str) -> Step:
    def step(items: Items) -> Items:
        return [
            (e, "Extension") for v, _ in items if isinstance(v, dict)
            for e in v.get("extension") or [] if isinstance(e, dict) and e.get("url") == url
        ]

    return step


def _first(items: Items) -> Items:
    return items[:1]


def _compile(node: Node, root_type: str) -> Callable[[Items], Items]:
    """A function from the input items to the output items for one AST node."""
    if isinstance(node, Member):
        if node.target is None:
            if node.name == root_type:
                return lambda items: items
            return _member(node.name)
        inner = _compile(node.target, root_type)
        step = _member(node.name)
        return lambda items: step(inner(items))
    if isinstance(node, TypeOp) and node.op == "as":
        inner = _compile(node.operand, root_type)
        step = _as_type(node.type_name)
        return lambda items: step(inner(items))
    if isinstance(node, Binary) and node.op == "|":
        left, right = _compile(node.left, root_type), _compile(node.right, root_type)
        return lambda items: left(items) + right(items)
    if isinstance(node, Call):
        inner = _compile(node.target, root_type) if node.target is not None else (lambda items: items)
        step = _call_step(node)
        return lambda items: step(inner(items))
    raise Unsupported(type(node).__name__)


def _type_name(node: Node) -> str:
    if isinstance(node, Member) and node.target is None:
        return node.name
    if isinstance(node, Member) and isinstance(node.target, Member) and node.target.target is None:
        return f"{node.target.name}.{node.name}"
    raise Unsupported("type argument")


def _call_step(node: Call) -> Step:
    args = node.args
    if node.name in ("ofType", "as") and len(args) == 1:
        return _as_type(_type_name(args[0]))
    if node.name == "first" and not args:
        return _first
    if node.name == "extension" and len(args) == 1 and isinstance(args[0], Literal):
        return _extension(str(args[0].value))
    if node.name == "where" and len(args) == 1:
        cond = args[0]
        if (
            isinstance(cond, TypeOp) and cond.op == "is" and isinstance(cond.operand, Call)
            and cond.operand.name == "resolve" and cond.operand.target is None
        ):
            return _where_resolve_is(cond.type_name.split(".")[-1])
        if (
            isinstance(cond, Binary) and cond.op == "=" and isinstance(cond.left, Member)
            and cond.left.target is None and isinstance(cond.right, Literal)
        ):
            return _where_equals(cond.left.name, cond.right.value)
    raise Unsupported(f"{node.name}()")


@cache
def extractor(expression: str, resource_type: str) -> Callable[[dict[str, Any]], list[Any]] | None:
    """A function listing the elements ``expression`` selects from a resource, or None if unsupported."""
    try:
        fn = _compile(parse(expression), resource_type)
    except (Unsupported, FhirPathError):
        return None

    def run(resource: dict[str, Any]) -> list[Any]:
        return [v for v, _ in fn([(resource, resource_type)])]

    return run
