"""ViewDefinition to one DuckDB SQL query.

The query is one flat lateral join: the source row, then one ``unnest(...)`` per iteration
(``forEach``, ``forEachOrNull`` unnesting ``[NULL]`` when empty, ``repeat`` unnesting a list built
by a recursive CTE), nested iterations referring to the item of their parent. Sibling nodes
cross-join. ``unionAll`` is a cross join with the branch number, each branch's unnests guarded by
it. Nodes that do not iterate add nothing: their columns are expressions on the current row. This
shape is what DuckDB executes fastest (plain UNNEST operators, no correlated subqueries to
decorrelate), so a compiled view runs close to hand-written SQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import count
from typing import Any

from mapping.fhirpath.ast import FhirPathError
from mapping.fhirpath.compiler import Compiler, constant_value
from mapping.fhirpath.values import (
    SQL_TYPE,
    Value,
    list_of,
    natural,
    natural_kind,
    render,
    single,
    sql_string,
    to_kind,
)
from mapping.viewdef.validate import ViewDefinitionError, constant_values, validate_view


@dataclass(frozen=True)
class Column:
    """One output column: ``fhir_type`` is the view's type hint (or the inferred FHIR type),
    ``sql_type`` the DuckDB type of the result column."""

    name: str
    fhir_type: str | None
    sql_type: str
    collection: bool

    @property
    def is_json(self) -> bool:
        return self.sql_type.startswith("JSON")


@dataclass(frozen=True)
class CompiledView:
    """The SQL of a view over a source relation, and the columns it yields in order."""

    name: str | None
    resource: str
    sql: str
    columns: tuple[Column, ...]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_Cols = list[tuple[Column, str]]


@dataclass(frozen=True)
class _Unnest:
    """A FROM item ``unnest(sql) [WITH ORDINALITY] AS alias(e[, i])``: every iteration of the view
    is one of these, joined laterally to the resource row and to the items before it."""

    sql: str
    alias: str
    ordinal: bool

    def __str__(self) -> str:
        if self.ordinal:
            return f"unnest({self.sql}) WITH ORDINALITY AS {self.alias}(e, i)"
        return f"unnest({self.sql}) AS {self.alias}(e)"


class _ViewCompiler:
    def __init__(self, view: dict[str, Any]) -> None:
        self.view = view
        self.resource: str = view["resource"]
        self.constants = {name: constant_value(value, fhir_type)
                          for name, (value, fhir_type) in constant_values(view).items()}
        self.root = Value.json("r.json", self.resource)
        self._ids = count()

    def alias(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def fhirpath(self, expr: str, ctx: Value, row_index: str, where: str) -> Value:
        constants = {**self.constants, "rowIndex": Value.literal(row_index, "bigint", "integer")}
        try:
            return Compiler(self.root, constants).compile(expr, ctx)
        except FhirPathError as exc:
            raise ViewDefinitionError(f"{where}: {exc}") from exc

    # -- select nodes ---------------------------------------------------------------------------
    def node(self, node: dict[str, Any], ctx: Value, row_index: str, where: str) -> tuple[list[_Unnest], _Cols]:
        if "repeat" in node:
            lst, elem_type = self.repeat_list(node["repeat"], ctx, row_index, where)
        elif "forEach" in node or "forEachOrNull" in node:
            key = "forEach" if "forEach" in node else "forEachOrNull"
            items = self.fhirpath(node[key], ctx, row_index, f"{where}.{key}")
            elem_type = items.fhir_type
            lst = list_of(to_kind(items, "json"))
            if key == "forEachOrNull":
                lst = f"(CASE WHEN len({lst}) = 0 THEN [NULL::JSON] ELSE {lst} END)"
        else:
            return self.body(node, ctx, row_index, where)
        u = self.alias("u")
        ordinal = "%rowIndex" in json.dumps(node)
        froms, cols = self.body(node, Value.json(f"{u}.e", elem_type), f"({u}.i - 1)" if ordinal else "0", where)
        return [_Unnest(lst, u, ordinal), *froms], cols

    def repeat_list(self, paths: list[str], ctx: Value, row_index: str, where: str) -> tuple[str, str | None]:
        """All items reached along the ``repeat`` paths, as one list in depth-first pre-order
        (a recursive CTE ordered by the path of ordinals)."""
        first = [self.fhirpath(p, ctx, row_index, f"{where}.repeat") for p in paths]
        types = {v.fhir_type for v in first}
        elem_type = types.pop() if len(types) == 1 else None
        rec = self.alias("rec")
        below = [self.fhirpath(p, Value.json(f"{rec}.e", elem_type), row_index, f"{where}.repeat") for p in paths]

        def children(values: list[Value]) -> str:
            return f"list_concat({', '.join(list_of(to_kind(v, 'json')) for v in values)})"

        sql = (f"coalesce((WITH RECURSIVE {rec}(e, k) AS ("
               f"SELECT t.e, [t.i] FROM unnest({children(first)}) WITH ORDINALITY AS t(e, i) "
               f"UNION ALL SELECT t.e, list_append({rec}.k, t.i) FROM {rec}, "
               f"unnest({children(below)}) WITH ORDINALITY AS t(e, i)) "
               f"SELECT list(e ORDER BY k) FROM {rec}), []::JSON[])")
        return sql, elem_type

    def body(self, node: dict[str, Any], ctx: Value, row_index: str,
             where: str) -> tuple[list[_Unnest], _Cols]:
        cols: _Cols = [self.column(c, ctx, row_index, f"{where}.column[{i}]")
                       for i, c in enumerate(node.get("column", []))]
        froms: list[_Unnest] = []
        for i, child in enumerate(node.get("select", [])):
            f, c = self.node(child, ctx, row_index, f"{where}.select[{i}]")
            froms += f
            cols += c
        if node.get("unionAll"):
            f, c = self.union_all(node["unionAll"], ctx, row_index, f"{where}.unionAll")
            froms += f
            cols += c
        return froms, cols

    def union_all(self, branches: list[dict[str, Any]], ctx: Value, row_index: str,
                  where: str) -> tuple[list[_Unnest], _Cols]:
        """Branches as a cross join with a branch number ``k``: branch j's unnests see their list
        only when ``k = j`` (one NULL item otherwise) and its columns are picked by ``k``. This keeps
        the whole view one flat join that DuckDB runs as plain UNNEST operators."""
        b = self.alias("b")
        froms: list[_Unnest] = [_Unnest(f"range({len(branches)})", b, False)]
        shape: list[Column] = []
        exprs: list[list[str]] = []
        for j, branch in enumerate(branches):
            f, cols = self.node(branch, ctx, row_index, f"{where}[{j}]")
            names = [col.name for col, _ in cols]
            if j == 0:
                shape = [col for col, _ in cols]
            elif names != [col.name for col in shape]:
                raise ViewDefinitionError(f"{where}[{j}]: unionAll branches must have the same columns in the "
                                          f"same order: {[c.name for c in shape]} vs {names}")
            froms += [_Unnest(f"(CASE WHEN {b}.e = {j} THEN {x.sql} ELSE [NULL] END)", x.alias, x.ordinal)
                      for x in f]
            exprs.append([expr for _, expr in cols])
        cols_out: _Cols = []
        for c, col in enumerate(shape):
            whens = " ".join(f"WHEN {j} THEN CAST({exprs[j][c]} AS {col.sql_type})" for j in range(len(branches)))
            cols_out.append((col, f"(CASE {b}.e {whens} END)"))
        return froms, cols_out

    def column(self, column: dict[str, Any], ctx: Value, row_index: str, where: str) -> tuple[Column, str]:
        value = self.fhirpath(column["path"], ctx, row_index, where)
        fhir_type = column.get("type") or natural(value).fhir_type
        kind = natural_kind(fhir_type) if column.get("type") else natural(value).kind
        collection = bool(column.get("collection", False))
        if collection:
            sql = list_of(to_kind(natural(value), kind))
        else:
            sql = render(to_kind(single(natural(value), f"column {column['name']}"), kind))
        sql_type = SQL_TYPE[kind] + ("[]" if collection else "")
        return Column(column["name"], fhir_type, sql_type, collection), sql

    # -- whole view -----------------------------------------------------------------------------
    def where(self) -> list[str]:
        conds = []
        for i, clause in enumerate(self.view.get("where", [])):
            value = self.fhirpath(clause["path"], self.root, "0", f"where[{i}]")
            known = natural(value)
            if known.kind != "boolean" and not (known.kind == "json" and known.fhir_type is None):
                raise ViewDefinitionError(f"where[{i}]: path {clause['path']!r} is {known.fhir_type}, "
                                          "not boolean")
            conds.append(f"coalesce({render(Compiler(self.root).boolean(value))}, FALSE)")
        return conds

    def compile(self, source: str) -> CompiledView:
        froms, cols = self.body({"select": self.view["select"]}, self.root, "0", "view")
        names = [col.name for col, _ in cols]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ViewDefinitionError(f"column names must be unique, repeated: {duplicates}")
        select = ",\n  ".join(f"{expr} AS {_quote(col.name)}" for col, expr in cols)
        joins = "".join(f",\n  {f}" for f in froms)
        conds = " AND ".join([f"r.resource_type = {sql_string(self.resource)}", *self.where()])
        sql = f"SELECT\n  {select}\nFROM {source} AS r{joins}\nWHERE {conds}"
        return CompiledView(self.view.get("name"), self.resource, sql, tuple(col for col, _ in cols))


def compile_view(view: dict[str, Any], source: str = "resources") -> CompiledView:
    """Compile a ViewDefinition to one SQL query over ``source``: a table/view name or a
    parenthesized subquery with at least ``resource_type``, ``id`` and ``json`` columns.

    Raises ViewDefinitionError for a malformed view, an unparsable or ill-typed expression, or
    columns that clash. A non-collection column whose path yields several values makes the *query*
    fail when it meets such data (SQL-on-FHIR requires an error, not a silent pick).
    """
    validate_view(view)
    return _ViewCompiler(view).compile(source)
