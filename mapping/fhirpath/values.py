"""Compiled FHIRPath values: SQL expressions with a statically known shape.

A FHIRPath collection becomes either a *scalar* SQL expression (the element, NULL when empty) when
the model says it holds at most one item, or a DuckDB LIST otherwise. Items are JSON values
(``kind`` ``json``) until an operator needs a SQL type (``varchar``, ``double``, ``bigint``,
``boolean``). Navigation from a JSON source is kept as a pending JSON path so that
``code.coding.code`` renders as one ``json_extract(json, '$.code.coding[*].code')`` call, which is
what a person would write by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from itertools import count

# How each FHIR primitive is represented once it leaves JSON. Everything else (string, code, uri,
# date, dateTime, instant, time, ...) is text; complex types stay JSON.
_FHIR_KIND = {
    "boolean": "boolean",
    "integer": "bigint",
    "positiveInt": "bigint",
    "unsignedInt": "bigint",
    "integer64": "bigint",
    "decimal": "double",
}
_COMPLEX_FIRST = re.compile(r"^[A-Z]")
SQL_TYPE = {"json": "JSON", "varchar": "VARCHAR", "double": "DOUBLE", "bigint": "BIGINT", "boolean": "BOOLEAN"}
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_lambda_ids = count()


def fresh(prefix: str = "x") -> str:
    """A lambda parameter name unique within the process (nested lambdas must not shadow)."""
    return f"{prefix}{next(_lambda_ids)}"


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def natural_kind(fhir_type: str | None) -> str:
    """The SQL kind a JSON item of this FHIR type converts to for comparisons and output."""
    if fhir_type is None:
        return "json"
    if fhir_type in _FHIR_KIND:
        return _FHIR_KIND[fhir_type]
    if _COMPLEX_FIRST.match(fhir_type) or "." in fhir_type:
        return "json"
    return "varchar"


@dataclass(frozen=True)
class Value:
    """One compiled collection. ``sql`` is authoritative unless ``src`` is set, in which case the
    value is ``json_extract(src, '$' + path)`` (mapped over ``src`` when ``src_many``). A pending
    polymorphic element (``value`` of ``value[x]``) lists its alternatives in ``choices`` until an
    ``ofType``/``as`` picks one."""

    sql: str
    many: bool
    kind: str = "json"
    fhir_type: str | None = None
    src: str | None = None
    src_many: bool = False
    path: str = ""
    choices: tuple[tuple[str, Value], ...] = field(default=())
    reference_of: Value | None = None

    @staticmethod
    def json(sql: str, fhir_type: str | None, many: bool = False) -> Value:
        """A JSON value rooted at ``sql`` (a resource column, a lambda parameter, an unnested item)."""
        return Value(sql=sql, many=many, fhir_type=fhir_type, src=None if many else sql)

    @staticmethod
    def literal(sql: str, kind: str, fhir_type: str | None) -> Value:
        return Value(sql=sql, many=False, kind=kind, fhir_type=fhir_type)

    @staticmethod
    def empty() -> Value:
        return Value(sql="NULL", many=False, kind="json")

    @property
    def is_empty(self) -> bool:
        """Statically known to be the empty collection (e.g. a path on another resource type)."""
        return self.sql == "NULL" and self.src is None and not self.choices


def _json_path(path: str) -> str:
    return sql_string("$" + path)


def path_step(key: str, repeats: bool) -> str:
    step = f".{key}" if _SIMPLE_KEY.match(key) else '."' + key.replace('"', '\\"') + '"'
    return step + ("[*]" if repeats else "")


def render(v: Value) -> str:
    """The SQL text of a value, materializing a pending choice as the one alternative present."""
    if v.choices:
        return render(merge_choices(v))
    if v.src is None or v.path == "":
        return v.sql if v.src is None else v.src
    if not v.src_many:
        return f"json_extract({v.src}, {_json_path(v.path)})"
    x = fresh()
    inner = f"json_extract({x}, {_json_path(v.path)})"
    if "[*]" in v.path:
        return f"flatten(list_transform({v.src}, lambda {x}: {inner}))"
    y = fresh()
    return f"list_filter(list_transform({v.src}, lambda {x}: {inner}), lambda {y}: {y} IS NOT NULL)"


def merge_choices(v: Value) -> Value:
    """Collapse the alternatives of a choice element: at most one is present in valid FHIR, so a
    COALESCE (or a list concatenation when they repeat) yields the present one."""
    alts = [alt for _, alt in v.choices]
    if not alts:
        return Value.empty()
    if len(alts) == 1:
        return alts[0]
    types = {alt.fhir_type for alt in alts}
    fhir_type = types.pop() if len(types) == 1 else None
    if any(alt.many for alt in alts):
        parts = ", ".join(render(as_list(to_kind(alt, "json"))) for alt in alts)
        return Value(sql=f"list_concat({parts})", many=True, fhir_type=fhir_type)
    if v.src is not None and not v.src_many and all(alt.src == v.src for alt in alts):
        paths = ", ".join(_json_path(alt.path) for alt in alts)
        x = fresh()
        sql = f"list_filter(json_extract({v.src}, [{paths}]), lambda {x}: {x} IS NOT NULL)[1]"
        return Value(sql=sql, many=False, fhir_type=fhir_type)
    parts = ", ".join(render(to_kind(alt, "json")) for alt in alts)
    return Value(sql=f"coalesce({parts})", many=False, fhir_type=fhir_type)


def navigate(v: Value, key: str, repeats: bool, fhir_type: str | None) -> Value:
    """Child ``key`` of every item of a JSON value, flattening when the child repeats."""
    if v.choices:
        v = merge_choices(v)
    if v.kind != "json":
        return Value.empty()
    step = path_step(key, repeats)
    if v.src is not None:
        return Value(sql="", many=v.src_many or "[*]" in v.path + step, fhir_type=fhir_type, src=v.src,
                     src_many=v.src_many, path=v.path + step)
    return Value(sql="", many=v.many or repeats, fhir_type=fhir_type, src=v.sql, src_many=v.many, path=step)


def navigate_unknown(v: Value, key: str) -> Value:
    """Child ``key`` when the model does not know whether it repeats: test the JSON type per item."""
    if v.choices:
        v = merge_choices(v)
    if v.kind != "json":
        return Value.empty()
    one, arr = _json_path(path_step(key, False)), _json_path(path_step(key, True))

    def child(x: str) -> str:
        return (f"CASE WHEN json_type({x}, {one}) = 'ARRAY' THEN json_extract({x}, {arr}) "
                f"WHEN json_extract({x}, {one}) IS NULL THEN []::JSON[] ELSE [json_extract({x}, {one})] END")

    if not v.many:
        return Value(sql=child(render(v)), many=True)
    x = fresh()
    return Value(sql=f"flatten(list_transform({render(v)}, lambda {x}: {child(x)}))", many=True)


def to_kind(v: Value, kind: str) -> Value:
    """Convert the items of ``v`` to SQL ``kind`` (json, varchar, double, bigint, boolean)."""
    if v.choices:
        v = merge_choices(v)
    if v.kind == kind:
        return v
    if v.kind == "json" and kind == "varchar" and v.src is not None and not v.src_many and v.path:
        sql = f"json_extract_string({v.src}, {_json_path(v.path)})"
        return Value(sql=sql, many=v.many, kind=kind, fhir_type=v.fhir_type)
    return Value(sql=_convert(render(v), v.many, v.kind, kind), many=v.many, kind=kind, fhir_type=v.fhir_type)


def _convert(sql: str, many: bool, src_kind: str, kind: str) -> str:
    if src_kind == "json" and kind == "varchar":
        if many:
            x = fresh()
            return f"list_transform({sql}, lambda {x}: json_extract_string({x}, '$'))"
        return f"json_extract_string({sql}, '$')"
    if kind == "json":
        if many:
            x = fresh()
            return f"list_transform({sql}, lambda {x}: to_json({x}))"
        return f"to_json({sql})"
    target = SQL_TYPE[kind] + ("[]" if many else "")
    if src_kind == "json":
        return f"TRY_CAST({sql} AS {target})"
    return f"CAST({sql} AS {target})"


def natural(v: Value) -> Value:
    """Convert JSON items to the SQL kind their FHIR type implies (text, number, boolean)."""
    if v.choices:
        v = merge_choices(v)
    if v.kind != "json":
        return v
    return to_kind(v, natural_kind(v.fhir_type))


def as_list(v: Value) -> Value:
    """The value as a LIST, however many items it can hold."""
    if v.choices:
        v = merge_choices(v)
    if v.many:
        return v
    sql = render(v)
    if sql == "NULL":
        return Value(sql=f"[]::{SQL_TYPE[v.kind]}[]", many=True, kind=v.kind, fhir_type=v.fhir_type)
    return Value(sql=f"CASE WHEN {sql} IS NULL THEN []::{SQL_TYPE[v.kind]}[] ELSE [{sql}] END", many=True,
                 kind=v.kind, fhir_type=v.fhir_type)


def single(v: Value, what: str = "expression") -> Value:
    """FHIRPath singleton evaluation: the one item, NULL when empty, a query error when several."""
    if v.choices:
        v = merge_choices(v)
    if not v.many:
        return v
    sql = render(v)
    msg = sql_string(f"FHIRPath {what} returned more than one value")
    return replace(v, sql=f"(CASE WHEN len({sql}) > 1 THEN error({msg}) ELSE ({sql})[1] END)", many=False,
                   src=None, src_many=False, path="")


def first(v: Value) -> Value:
    if v.choices:
        v = merge_choices(v)
    if not v.many:
        return v
    if v.src is not None and not v.src_many and v.path.count("[*]") == 1 and v.path.endswith("[*]"):
        return replace(v, many=False, path=v.path[:-3] + "[0]")
    return Value(sql=f"({render(v)})[1]", many=False, kind=v.kind, fhir_type=v.fhir_type)


def list_of(v: Value) -> str:
    return render(as_list(v))
