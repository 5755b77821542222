"""FHIRPath functions, each compiled to DuckDB list/JSON/string SQL (registered by name)."""

from __future__ import annotations

from dataclasses import replace

from mapping.fhirpath.ast import FhirPathError, Member, Node
from mapping.fhirpath.compiler import Compiler, Scope, register, union
from mapping.fhirpath.values import (
    Value,
    as_list,
    first,
    fresh,
    list_of,
    merge_choices,
    natural,
    render,
    single,
    sql_string,
    to_kind,
)


def _arity(name: str, args: tuple[Node, ...], low: int, high: int) -> None:
    if not low <= len(args) <= high:
        raise FhirPathError(f"{name}() takes {low}..{high} arguments, got {len(args)}")


def _type_arg(node: Node) -> str:
    parts: list[str] = []
    while isinstance(node, Member):
        parts.append(node.name)
        if node.target is None:
            return ".".join(reversed(parts))
        node = node.target
    raise FhirPathError("expected a type name argument")


def _bool(sql: str) -> Value:
    return Value.literal(sql, "boolean", "boolean")


def _text(c: Compiler, v: Value) -> str:
    return render(single(to_kind(natural(v), "varchar")))


def _item(target: Value, name: str) -> Value:
    if target.kind == "json":
        return Value.json(name, target.fhir_type)
    return Value.literal(name, target.kind, target.fhir_type)


def _filter(c: Compiler, target: Value, cond: Node, scope: Scope) -> Value:
    """``where``: keep the items for which ``cond`` (with ``$this`` = item) is true."""
    target = merge_choices(target) if target.choices else target
    if not target.many:
        ok = render(c.boolean(c.node(cond, Scope(target, "0"))))
        return replace(target, sql=f"(CASE WHEN {ok} THEN {render(target)} END)", src=None, path="")
    x, i = fresh(), fresh("i")
    ok = render(c.boolean(c.node(cond, Scope(_item(target, x), f"({i} - 1)"))))
    return Value(sql=f"list_filter({render(target)}, lambda {x}, {i}: {ok})", many=True, kind=target.kind,
                 fhir_type=target.fhir_type)


@register("where")
def _where(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("where", args, 1, 1)
    return _filter(c, target, args[0], scope)


@register("select")
def _select(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("select", args, 1, 1)
    target = merge_choices(target) if target.choices else target
    if not target.many:
        return c.node(args[0], Scope(target, "0"))
    x, i = fresh(), fresh("i")
    projected = c.node(args[0], Scope(_item(target, x), f"({i} - 1)"))
    inner = list_of(projected)
    return Value(sql=f"flatten(list_transform({render(target)}, lambda {x}, {i}: {inner}))", many=True,
                 kind=projected.kind, fhir_type=projected.fhir_type)


def _exists_sql(v: Value) -> str:
    v = merge_choices(v) if v.choices else v
    return f"(len({render(v)}) > 0)" if v.many else f"({render(v)} IS NOT NULL)"


@register("exists")
def _exists(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("exists", args, 0, 1)
    return _bool(_exists_sql(_filter(c, target, args[0], scope) if args else target))


@register("empty")
def _empty(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("empty", args, 0, 0)
    return _bool(f"(NOT {_exists_sql(target)})")


@register("hasValue")
def _has_value(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("hasValue", args, 0, 0)
    return _bool(_exists_sql(single(target)))


@register("all")
def _all(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("all", args, 1, 1)
    target = merge_choices(target) if target.choices else target
    x = fresh()
    ok = render(c.boolean(c.node(args[0], Scope(_item(target, x)))))
    return _bool(f"(len(list_filter({list_of(target)}, lambda {x}: NOT coalesce({ok}, FALSE))) = 0)")


def _aggregate(name: str) -> None:
    agg, negate, empty = {"allTrue": ("bool_and", "", "TRUE"), "anyTrue": ("bool_or", "", "FALSE"),
                          "allFalse": ("bool_and", "NOT ", "TRUE"), "anyFalse": ("bool_or", "NOT ", "FALSE")}[name]

    def impl(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
        _arity(name, args, 0, 0)
        items = list_of(to_kind(natural(target), "boolean"))
        x = fresh()
        mapped = f"list_transform({items}, lambda {x}: {negate}{x})"
        return _bool(f"coalesce(list_aggregate({mapped}, '{agg}'), {empty})")

    register(name)(impl)


for _name in ("allTrue", "anyTrue", "allFalse", "anyFalse"):
    _aggregate(_name)


@register("count")
def _count(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("count", args, 0, 0)
    target = merge_choices(target) if target.choices else target
    sql = f"len({render(target)})" if target.many else f"(CASE WHEN {render(target)} IS NULL THEN 0 ELSE 1 END)"
    return Value.literal(sql, "bigint", "integer")


@register("first")
def _first(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("first", args, 0, 0)
    return first(target)


@register("last")
def _last(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("last", args, 0, 0)
    target = merge_choices(target) if target.choices else target
    if not target.many:
        return target
    return Value(sql=f"({render(target)})[-1]", many=False, kind=target.kind, fhir_type=target.fhir_type)


def _slice(target: Value, lo: str, hi: str) -> Value:
    lst = as_list(target)
    return Value(sql=f"({render(lst)})[{lo}:{hi}]", many=True, kind=lst.kind, fhir_type=lst.fhir_type)


@register("tail")
def _tail(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("tail", args, 0, 0)
    return _slice(target, "2", "")


@register("skip")
def _skip(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("skip", args, 1, 1)
    n = render(single(to_kind(c.node(args[0], scope), "bigint")))
    return _slice(target, f"greatest({n}, 0) + 1", "")


@register("take")
def _take(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("take", args, 1, 1)
    n = render(single(to_kind(c.node(args[0], scope), "bigint")))
    return _slice(target, "1", f"greatest({n}, 0)")


@register("single")
def _single(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("single", args, 0, 0)
    return single(target, "single()")


@register("distinct")
def _distinct(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("distinct", args, 0, 0)
    if not target.many:
        return target
    return Value(sql=f"list_distinct({render(target)})", many=True, kind=target.kind, fhir_type=target.fhir_type)


@register("union")
def _union(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("union", args, 1, 1)
    return union(target, c.node(args[0], scope))


@register("combine")
def _combine(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("combine", args, 1, 1)
    other = c.node(args[0], scope)
    kind = target.kind if target.kind == other.kind else "json"
    sql = f"list_concat({list_of(to_kind(target, kind))}, {list_of(to_kind(other, kind))})"
    return Value(sql=sql, many=True, kind=kind,
                 fhir_type=target.fhir_type if target.fhir_type == other.fhir_type else None)


@register("not")
def _not(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("not", args, 0, 0)
    return _bool(f"(NOT {render(c.boolean(target))})")


@register("iif")
def _iif(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("iif", args, 2, 3)
    cond = render(c.boolean(c.node(args[0], scope)))
    yes = natural(c.node(args[1], scope))
    no = natural(c.node(args[2], scope)) if len(args) == 3 else Value.empty()
    kind = yes.kind if yes.kind == no.kind or no.sql == "NULL" else "json"
    if yes.many or no.many:
        a, b = list_of(to_kind(yes, kind)), list_of(to_kind(no, kind))
        return Value(sql=f"(CASE WHEN {cond} THEN {a} ELSE {b} END)", many=True, kind=kind)
    a, b = render(to_kind(yes, kind)), render(to_kind(no, kind))
    return Value(sql=f"(CASE WHEN {cond} THEN {a} ELSE {b} END)", many=False, kind=kind,
                 fhir_type=yes.fhir_type if yes.fhir_type == no.fhir_type else None)


@register("ofType", "as")
def _of_type(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("ofType", args, 1, 1)
    return c.of_type(target, _type_arg(args[0]))


@register("is")
def _is(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("is", args, 1, 1)
    return c.is_type(target, _type_arg(args[0]))


@register("extension")
def _extension(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("extension", args, 1, 1)
    url = _text(c, c.node(args[0], scope))
    extensions = as_list(c.child(target, "extension"))
    x = fresh()
    return Value(sql=f"list_filter({render(extensions)}, lambda {x}: json_extract_string({x}, '$.url') = {url})",
                 many=True, fhir_type="Extension")


@register("join")
def _join(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("join", args, 0, 1)
    sep = _text(c, c.node(args[0], scope)) if args else "''"
    items = list_of(to_kind(natural(target), "varchar"))
    return Value.literal(f"array_to_string({items}, {sep})", "varchar", "string")


_LOW_TIME, _HIGH_TIME = "'00:00:00.000'", "'23:59:59.999'"


def _low_date(d: str) -> str:
    return f"({d} || substr('-01-01', length({d}) - 3))"


def _high_date(d: str) -> str:
    return (f"(CASE length({d}) WHEN 4 THEN {d} || '-12-31' WHEN 7 THEN "
            f"strftime(last_day(CAST({d} || '-01' AS DATE)), '%Y-%m-%d') ELSE {d} END)")


def _fill_time(t: str, pattern: str) -> str:
    return f"({t} || substr({pattern}, length({t}) + 1))"


def _boundary(name: str, high: bool) -> None:
    def impl(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
        _arity(name, args, 0, 1)
        v = single(target)
        fhir_type = v.fhir_type
        if fhir_type in ("decimal", "integer"):
            t = render(to_kind(v, "varchar"))
            digits = f"(CASE WHEN contains({t}, '.') THEN length({t}) - strpos({t}, '.') ELSE 0 END)"
            sign = "+" if high else "-"
            sql = f"round(CAST({t} AS DOUBLE) {sign} 0.5 * pow(10, -{digits}), CAST({digits} + 1 AS INTEGER))"
            return Value.literal(sql, "double", "decimal")
        t = render(to_kind(v, "varchar"))
        if fhir_type == "date":
            return Value.literal(_high_date(t) if high else _low_date(t), "varchar", "date")
        if fhir_type == "time":
            return Value.literal(_fill_time(t, _HIGH_TIME if high else _LOW_TIME), "varchar", "time")
        if fhir_type in ("dateTime", "instant"):
            d = f"regexp_extract({t}, '^(\\d{{4}}(-\\d{{2}}(-\\d{{2}})?)?)', 1)"
            tm = f"regexp_extract({t}, 'T([0-9:.]*)', 1)"
            tz = f"regexp_extract({t}, '(Z|[+-]\\d{{2}}:\\d{{2}})$', 1)"
            day = _high_date(d) if high else _low_date(d)
            clock = _fill_time(tm, _HIGH_TIME if high else _LOW_TIME)
            zone = f"(CASE WHEN {tz} = '' THEN '{'-12:00' if high else '+14:00'}' ELSE {tz} END)"
            return Value.literal(f"(CASE WHEN {t} IS NOT NULL THEN {day} || 'T' || {clock} || {zone} END)",
                                 "varchar", "dateTime")
        raise FhirPathError(f"{name}() needs a decimal, date, dateTime or time, not {fhir_type}")

    register(name)(impl)


_boundary("lowBoundary", high=False)
_boundary("highBoundary", high=True)


@register("getResourceKey")
def _resource_key(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("getResourceKey", args, 0, 0)
    return Value.literal(f"json_extract_string({render(single(target))}, '$.id')", "varchar", "string")


def _reference_key_sql(ref: str, wanted: str | None) -> str:
    """One regexp over ``Reference.reference``: ``[base/]Type/id[/_history/v]`` gives ``id``."""
    if wanted is not None:
        pattern = sql_string(f"(?:^|/){wanted}/([^/]+?)(?:/_history/[^/]+)?$")
        return f"nullif(regexp_extract({ref}, {pattern}, 1), '')"
    pattern = sql_string("(?:^|/)[A-Za-z]+/([^/]+?)(?:/_history/[^/]+)?$")
    return (f"(CASE WHEN starts_with({ref}, 'urn:uuid:') THEN substr({ref}, 10) "
            f"ELSE nullif(regexp_extract({ref}, {pattern}, 1), '') END)")


@register("getReferenceKey")
def _reference_key(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    """The id a reference points at (the key ``getResourceKey()`` gives that resource), optionally
    only when it points at the given resource type. ``urn:uuid:`` references key by their uuid."""
    _arity("getReferenceKey", args, 0, 1)
    wanted = _type_arg(args[0]) if args else None
    refs = to_kind(c.child(target, "reference"), "varchar")
    if not refs.many:
        return Value.literal(_reference_key_sql(render(refs), wanted), "varchar", "string")
    x, y = fresh(), fresh()
    keys = f"list_transform({render(refs)}, lambda {x}: {_reference_key_sql(x, wanted)})"
    return Value(sql=f"list_filter({keys}, lambda {y}: {y} IS NOT NULL)", many=True, kind="varchar",
                 fhir_type="string")


@register("resolve")
def _resolve(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    """Only the reference's type is knowable inside one resource's SQL: ``resolve() is T`` and
    ``resolve().ofType(T)`` test the type prefix of ``Reference.reference``."""
    _arity("resolve", args, 0, 0)
    return replace(target, reference_of=c.child(target, "reference"), fhir_type=None)


def _string_fn(name: str, nargs: tuple[int, int], template: str, kind: str, fhir_type: str) -> None:
    def impl(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
        _arity(name, args, *nargs)
        s = _text(c, target)
        params = [_text(c, c.node(a, scope)) for a in args]
        return Value.literal(template.format(s, *params), kind, fhir_type)

    register(name)(impl)


for _n, _arity_range, _tpl, _kind, _type in (
    ("startsWith", (1, 1), "starts_with({0}, {1})", "boolean", "boolean"),
    ("endsWith", (1, 1), "suffix({0}, {1})", "boolean", "boolean"),
    ("contains", (1, 1), "contains({0}, {1})", "boolean", "boolean"),
    ("matches", (1, 1), "regexp_matches({0}, {1})", "boolean", "boolean"),
    ("replaceMatches", (2, 2), "regexp_replace({0}, {1}, {2}, 'g')", "varchar", "string"),
    ("replace", (2, 2), "replace({0}, {1}, {2})", "varchar", "string"),
    ("indexOf", (1, 1), "(strpos({0}, {1}) - 1)", "bigint", "integer"),
    ("length", (0, 0), "length({0})", "bigint", "integer"),
    ("upper", (0, 0), "upper({0})", "varchar", "string"),
    ("lower", (0, 0), "lower({0})", "varchar", "string"),
    ("trim", (0, 0), "trim({0})", "varchar", "string"),
    ("toString", (0, 0), "{0}", "varchar", "string"),
    ("toInteger", (0, 0), "TRY_CAST({0} AS BIGINT)", "bigint", "integer"),
    ("toDecimal", (0, 0), "TRY_CAST({0} AS DOUBLE)", "double", "decimal"),
):
    _string_fn(_n, _arity_range, _tpl, _kind, _type)


@register("substring")
def _substring(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("substring", args, 1, 2)
    s = _text(c, target)
    start = render(single(to_kind(natural(c.node(args[0], scope)), "bigint")))
    length = render(single(to_kind(natural(c.node(args[1], scope)), "bigint"))) if len(args) == 2 else None
    body = f"substr({s}, {start} + 1{', ' + length if length else ''})"
    return Value.literal(f"(CASE WHEN {start} >= 0 AND {start} < length({s}) THEN {body} END)", "varchar", "string")


def _math_fn(name: str, template: str, kind: str | None) -> None:
    def impl(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
        v = single(natural(target))
        if v.kind not in ("bigint", "double"):
            raise FhirPathError(f"{name}() needs a number")
        params = [render(single(natural(c.node(a, scope)))) for a in args]
        out = kind or v.kind
        return Value.literal(template.format(render(v), *params), out, "integer" if out == "bigint" else "decimal")

    register(name)(impl)


for _n, _tpl, _kind in (("abs", "abs({0})", None), ("ceiling", "CAST(ceil({0}) AS BIGINT)", "bigint"),
                        ("floor", "CAST(floor({0}) AS BIGINT)", "bigint"), ("sqrt", "sqrt({0})", "double"),
                        ("ln", "ln({0})", "double"), ("exp", "exp({0})", "double"),
                        ("truncate", "CAST(trunc({0}) AS BIGINT)", "bigint"),
                        ("power", "pow({0}, {1})", "double")):
    _math_fn(_n, _tpl, _kind)


@register("round")
def _round(c: Compiler, target: Value, args: tuple[Node, ...], scope: Scope) -> Value:
    _arity("round", args, 0, 1)
    v = single(to_kind(natural(target), "double"))
    digits = render(single(to_kind(natural(c.node(args[0], scope)), "bigint"))) if args else "0"
    return Value.literal(f"round({render(v)}, CAST({digits} AS INTEGER))", "double", "decimal")
