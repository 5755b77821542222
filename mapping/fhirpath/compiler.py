"""FHIRPath AST to DuckDB SQL over JSON.

The compiler is typed by the FHIR R4 element model (``schema``): it knows at compile time whether a
path can hold several items, which alternative of a choice element ``ofType`` picks and whether a
``where`` clause is boolean. Everything becomes one SQL expression; nothing runs per row in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from mapping.fhirpath.ast import (
    Binary,
    Call,
    Constant,
    FhirPathError,
    Index,
    Literal,
    Member,
    Node,
    TypeOp,
    Unary,
    Variable,
)
from mapping.fhirpath.parser import parse
from mapping.fhirpath.schema import Schema, r4_schema
from mapping.fhirpath.values import (
    Value,
    as_list,
    first,
    fresh,
    list_of,
    merge_choices,
    natural,
    navigate,
    navigate_unknown,
    render,
    single,
    sql_string,
    to_kind,
)

# FHIRPath System types named in type specifiers, as the FHIR types they stand for.
_SYSTEM_TYPES = {"String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal",
                 "Date": "date", "DateTime": "dateTime", "Time": "time", "Quantity": "Quantity"}
_NUMERIC = ("bigint", "double")
_WELL_KNOWN = {"ucum": "http://unitsofmeasure.org", "sct": "http://snomed.info/sct", "loinc": "http://loinc.org"}
BOOLEAN_TYPES = frozenset({"boolean"})
# Functions whose result on an empty input is known to be empty, whatever their arguments.
_EMPTY_IN_EMPTY_OUT = frozenset({"where", "select", "first", "last", "tail", "skip", "take", "single", "ofType",
                                 "as", "extension", "distinct", "resolve", "getReferenceKey", "substring"})


@dataclass(frozen=True)
class Scope:
    """What ``$this`` and ``$index`` mean where a sub-expression is compiled."""

    this: Value
    index: str | None = None


def _literal(kind: str, value: object) -> Value:
    if kind == "empty":
        return Value.empty()
    if kind == "boolean":
        return Value.literal("TRUE" if value else "FALSE", "boolean", "boolean")
    if kind == "integer":
        return Value.literal(str(int(value)), "bigint", "integer")  # type: ignore[call-overload]
    if kind == "decimal":
        return Value.literal(f"CAST({value} AS DOUBLE)", "double", "decimal")
    if kind in ("string", "date", "dateTime", "time"):
        return Value.literal(sql_string(str(value)), "varchar", kind)
    raise FhirPathError(f"{kind} literals are not supported")


def constant_value(value: object, fhir_type: str) -> Value:
    """A view constant (``valueString``, ``valueInteger``, ...) as a compiled literal."""
    kind = {"boolean": "boolean", "integer": "integer", "positiveInt": "integer", "unsignedInt": "integer",
            "decimal": "decimal"}.get(fhir_type, "string")
    lit = _literal(kind, value)
    return replace(lit, fhir_type=fhir_type)


def _type_name(spec: str) -> str:
    namespace, _, name = spec.rpartition(".")
    if namespace == "System":
        return _SYSTEM_TYPES.get(name, name)
    return name


class Compiler:
    """Compiles FHIRPath text against a root resource value.

    ``constants`` maps ``%name`` to compiled values (view constants, ``%rowIndex``); ``%resource``,
    ``%rootResource`` and ``%context`` are the root; ``%ucum``, ``%sct``, ``%loinc`` are built in.
    """

    def __init__(self, root: Value, constants: Mapping[str, Value] | None = None,
                 schema: Schema | None = None) -> None:
        self.schema = schema or r4_schema()
        self.root = root
        self.constants = dict(constants or {})

    def compile(self, text: str, this: Value | None = None) -> Value:
        return self.node(parse(text), Scope(this or self.root))

    # -- dispatch -------------------------------------------------------------------------------
    def node(self, n: Node, scope: Scope) -> Value:
        if isinstance(n, Literal):
            return _literal(n.kind, n.value)
        if isinstance(n, Member):
            return self.member(n, scope)
        if isinstance(n, Call):
            target = scope.this if n.target is None else self.node(n.target, scope)
            fn = FUNCTIONS.get(n.name)
            if fn is None:
                raise FhirPathError(f"unsupported FHIRPath function {n.name}()")
            if target.is_empty and n.name in _EMPTY_IN_EMPTY_OUT:
                return target
            return fn(self, target, n.args, scope)
        if isinstance(n, Index):
            return self.index(self.node(n.target, scope), self.node(n.index, scope))
        if isinstance(n, Binary):
            return self.binary(n, scope)
        if isinstance(n, Unary):
            v = self.node(n.operand, scope)
            if n.op == "+":
                return v
            v = single(natural(v))
            if v.kind not in _NUMERIC:
                raise FhirPathError("unary minus needs a number")
            return replace(v, sql=f"(- {render(v)})", src=None, path="")
        if isinstance(n, TypeOp):
            operand = self.node(n.operand, scope)
            return self.of_type(operand, n.type_name) if n.op == "as" else self.is_type(operand, n.type_name)
        if isinstance(n, Variable):
            if n.name == "this":
                return scope.this
            if n.name == "index" and scope.index is not None:
                return Value.literal(scope.index, "bigint", "integer")
            raise FhirPathError(f"${n.name} is not available here")
        if isinstance(n, Constant):
            return self.constant(n.name)
        raise FhirPathError(f"cannot compile {n!r}")

    def constant(self, name: str) -> Value:
        if name in self.constants:
            return self.constants[name]
        if name in ("resource", "rootResource", "context"):
            return self.root
        if name in _WELL_KNOWN:
            return Value.literal(sql_string(_WELL_KNOWN[name]), "varchar", "uri")
        raise FhirPathError(f"undefined constant %{name}")

    def member(self, n: Member, scope: Scope) -> Value:
        base = scope.this if n.target is None else self.node(n.target, scope)
        if n.target is None and n.name[:1].isupper() and n.name in self.schema.resources:
            return base if base.fhir_type == n.name else Value.empty()
        return self.child(base, n.name)

    def child(self, base: Value, name: str) -> Value:
        if base.is_empty:
            return base
        if base.choices:
            alts = [(t, self.child(alt, name)) for t, alt in base.choices
                    if self.schema.element(alt.fhir_type, name) is not None]
            return replace(base, choices=tuple(alts)) if alts else Value.empty()
        element = self.schema.element(base.fhir_type, name)
        if element is None:
            return navigate_unknown(base, name)
        if element.is_choice:
            alts = tuple((t, navigate(base, name + t[0].upper() + t[1:], element.repeats, t))
                         for t in element.types)
            return Value(sql="", many=base.many or element.repeats, fhir_type=None, src=base.src,
                         src_many=base.src_many, path=base.path, choices=alts)
        return navigate(base, name, element.repeats, element.types[0])

    def index(self, v: Value, idx: Value) -> Value:
        i = render(single(to_kind(idx, "bigint")))
        if v.choices:
            v = merge_choices(v)
        if not v.many:
            return replace(v, sql=f"(CASE WHEN {i} = 0 THEN {render(v)} END)", src=None, path="")
        if (v.src is not None and not v.src_many and v.path.endswith("[*]") and v.path.count("[*]") == 1
                and i.isdigit()):
            return replace(v, many=False, path=v.path[:-3] + f"[{i}]")
        return Value(sql=f"({render(v)})[{i} + 1]", many=False, kind=v.kind, fhir_type=v.fhir_type)

    # -- types ----------------------------------------------------------------------------------
    def _matches(self, actual: str | None, wanted: str) -> bool:
        if actual is None:
            return True
        return actual == wanted or self.schema.base_type(actual) == wanted

    def of_type(self, v: Value, spec: str) -> Value:
        wanted = _type_name(spec)
        if v.choices:
            picked = [alt for t, alt in v.choices if self._matches(t, wanted)]
            return replace(v, choices=tuple((wanted, p) for p in picked)) if len(picked) > 1 else (
                picked[0] if picked else Value.empty())
        if v.reference_of is not None:
            return replace(v, sql=f"(CASE WHEN {render(self.is_type(v, spec))} THEN {render(v)} END)",
                           reference_of=None, fhir_type=wanted)
        if v.fhir_type is None:
            return replace(v, fhir_type=wanted) if self.schema.is_type(wanted) else v
        return v if self._matches(v.fhir_type, wanted) else Value.empty()

    def is_type(self, v: Value, spec: str) -> Value:
        wanted = _type_name(spec)
        if v.reference_of is not None:
            ref = render(single(to_kind(v.reference_of, "varchar")))
            pattern = sql_string(f"(^|/){wanted}/[^/]+(/_history/[^/]+)?$")
            return Value.literal(f"regexp_matches({ref}, {pattern})", "boolean", "boolean")
        picked = self.of_type(v, spec)
        present = render(single(picked if picked.choices == () else merge_choices(picked)))
        whole = render(single(v))
        return Value.literal(f"(CASE WHEN {whole} IS NULL THEN NULL ELSE {present} IS NOT NULL END)",
                             "boolean", "boolean")

    # -- operators ------------------------------------------------------------------------------
    def boolean(self, v: Value) -> Value:
        """FHIRPath's implicit conversion of a collection to Boolean (a single item counts as true)."""
        v = merge_choices(v) if v.choices else v
        if v.kind == "boolean":
            return single(v)
        if v.kind == "json" and v.fhir_type in BOOLEAN_TYPES:
            return single(to_kind(v, "boolean"))
        if v.many:
            sql = render(v)
            msg = sql_string("FHIRPath boolean expression returned more than one value")
            return Value.literal(f"(CASE len({sql}) WHEN 0 THEN NULL WHEN 1 THEN TRUE ELSE error({msg}) END)",
                                 "boolean", "boolean")
        sql = render(v)
        if v.kind == "json" and v.fhir_type is None:
            return Value.literal(f"(CASE WHEN {sql} IS NULL THEN NULL WHEN json_type({sql}) = 'BOOLEAN' "
                                 f"THEN CAST({sql} AS BOOLEAN) ELSE TRUE END)", "boolean", "boolean")
        return Value.literal(f"({sql} IS NOT NULL OR NULL)", "boolean", "boolean")

    def binary(self, n: Binary, scope: Scope) -> Value:
        left, right = self.node(n.left, scope), self.node(n.right, scope)
        op = n.op
        if op in ("and", "or", "xor", "implies"):
            a, b = render(self.boolean(left)), render(self.boolean(right))
            sql = {"and": f"({a} AND {b})", "or": f"({a} OR {b})", "xor": f"({a} <> {b})",
                   "implies": f"((NOT {a}) OR {b})"}[op]
            return Value.literal(sql, "boolean", "boolean")
        if op == "|":
            return union(left, right)
        if op in ("=", "!=", "~", "!~"):
            return self.equality(left, right, negate=op.startswith("!"), equivalent="~" in op)
        if op in ("<", ">", "<=", ">="):
            a, b = _comparable(single(natural(left)), single(natural(right)))
            return Value.literal(f"({render(a)} {op} {render(b)})", "boolean", "boolean")
        if op in ("in", "contains"):
            item, coll = (left, right) if op == "in" else (right, left)
            x, c = _comparable(single(natural(item)), natural(as_list(coll)))
            return Value.literal(f"(CASE WHEN {render(x)} IS NULL THEN NULL ELSE list_contains({render(c)}, "
                                 f"{render(x)}) END)", "boolean", "boolean")
        if op == "&":
            a, b = (render(to_kind(single(natural(v)), "varchar")) for v in (left, right))
            return Value.literal(f"(coalesce({a}, '') || coalesce({b}, ''))", "varchar", "string")
        return self.arithmetic(op, single(natural(left)), single(natural(right)))

    def arithmetic(self, op: str, a: Value, b: Value) -> Value:
        if op == "+" and a.kind == "varchar" and b.kind == "varchar":
            return Value.literal(f"({render(a)} || {render(b)})", "varchar", "string")
        if a.kind not in _NUMERIC or b.kind not in _NUMERIC:
            raise FhirPathError(f"operator {op} needs numbers")
        both_int = a.kind == b.kind == "bigint"
        x, y = render(a), render(b)
        if op == "/":
            return Value.literal(f"(CAST({x} AS DOUBLE) / NULLIF({y}, 0))", "double", "decimal")
        if op == "div":
            return Value.literal(f"CAST(trunc({x} / NULLIF({y}, 0)) AS BIGINT)", "bigint", "integer")
        if op == "mod":
            return Value.literal(f"({x} % NULLIF({y}, 0))", a.kind if both_int else "double",
                                 "integer" if both_int else "decimal")
        return Value.literal(f"({x} {op} {y})", "bigint" if both_int else "double",
                             "integer" if both_int else "decimal")

    def equality(self, left: Value, right: Value, negate: bool, equivalent: bool) -> Value:
        left, right = natural(left), natural(right)
        if left.is_empty or right.is_empty:
            return Value.literal("CAST(NULL AS BOOLEAN)", "boolean", "boolean")
        loose = (left.kind == "json") != (right.kind == "json")
        a, b = _comparable(left, right)
        if equivalent and a.kind == b.kind == "varchar":
            a = replace(a, sql=_map(render(a), a.many, "lower(trim({}))"), src=None, path="")
            b = replace(b, sql=_map(render(b), b.many, "lower(trim({}))"), src=None, path="")
        if not a.many and not b.many and loose:
            # An item of unknown type that does not convert to the other side's type is unequal.
            raw_a, raw_b = render(left), render(right)
            sql = (f"(CASE WHEN {raw_a} IS NULL OR {raw_b} IS NULL THEN NULL "
                   f"ELSE coalesce({render(a)} = {render(b)}, FALSE) END)")
        elif not a.many and not b.many:
            sql = f"({render(a)} = {render(b)})"
        else:
            la, lb = render(as_list(a)), render(as_list(b))
            sql = f"(CASE WHEN len({la}) = 0 OR len({lb}) = 0 THEN NULL ELSE {la} = {lb} END)"
        if equivalent:
            sql = f"coalesce({sql}, {render(as_list(a))} = {render(as_list(b))})"
        return Value.literal(f"(NOT {sql})" if negate else sql, "boolean", "boolean")


def _map(sql: str, many: bool, template: str) -> str:
    if not many:
        return template.format(sql)
    x = fresh()
    return f"list_transform({sql}, lambda {x}: {template.format(x)})"


def _comparable(a: Value, b: Value) -> tuple[Value, Value]:
    """Bring two operands to one SQL kind: numbers compare as numbers, JSON objects as JSON text,
    anything else as text."""
    if a.kind == b.kind:
        if a.kind == "json":
            return to_kind(a, "varchar"), to_kind(b, "varchar")
        return a, b
    if a.kind in _NUMERIC and b.kind in _NUMERIC:
        return to_kind(a, "double"), to_kind(b, "double")
    if "json" in (a.kind, b.kind):
        target = b.kind if a.kind == "json" else a.kind
        return to_kind(a, target), to_kind(b, target)
    return to_kind(a, "varchar"), to_kind(b, "varchar")


def union(left: Value, right: Value) -> Value:
    """FHIRPath ``|``: both collections with duplicates removed (the spec promises no order)."""
    if left.is_empty or right.is_empty:
        only = right if left.is_empty else left
        if not only.many:
            return only
        return Value(sql=f"list_distinct({render(only)})", many=True, kind=only.kind, fhir_type=only.fhir_type)
    kind = left.kind if left.kind == right.kind else "json"
    a, b = list_of(to_kind(left, kind)), list_of(to_kind(right, kind))
    fhir_type = left.fhir_type if left.fhir_type == right.fhir_type else None
    return Value(sql=f"list_distinct(list_concat({a}, {b}))", many=True, kind=kind, fhir_type=fhir_type)


FunctionImpl = Callable[[Compiler, Value, tuple[Node, ...], Scope], Value]
FUNCTIONS: dict[str, FunctionImpl] = {}


def register(*names: str) -> Callable[[FunctionImpl], FunctionImpl]:
    def deco(fn: FunctionImpl) -> FunctionImpl:
        for name in names:
            FUNCTIONS[name] = fn
        return fn

    return deco


def compile_fhirpath(expr: str, root_sql: str, resource_type: str | None,
                     constants: Mapping[str, Value] | None = None) -> Value:
    """Compile ``expr`` evaluated on the resource JSON held by SQL ``root_sql``."""
    return Compiler(Value.json(root_sql, resource_type), constants).compile(expr)


# The function table fills itself on import; it needs the names above, hence the late import.
from mapping.fhirpath import functions as _functions  # noqa: E402,F401

__all__ = ["Compiler", "Scope", "Value", "compile_fhirpath", "constant_value", "first", "union"]
