"""Search index tables, filled at write time from the R4 SearchParameter definitions.

For each resource in a write batch, every search parameter's elements are
listed (``store.extract`` in Python for the simple expressions, the
FHIRPath→SQL compiler for the others), split into typed rows
(``store.index_rows``), and appended with one ``INSERT`` per index table. It
runs inside the writer's transaction, so the index is never behind the
resources it describes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from mapping.fhirpath.values import sql_string
from store import index_rows as rows
from store.extract import type_extractor
from store.search_params import params_for

INDEX_DDL = """
CREATE TABLE IF NOT EXISTS idx_token (rt VARCHAR, id VARCHAR, param VARCHAR, system VARCHAR, code VARCHAR,
    text VARCHAR, pid VARCHAR);
CREATE TABLE IF NOT EXISTS idx_string (rt VARCHAR, id VARCHAR, param VARCHAR, value VARCHAR, raw VARCHAR,
    pid VARCHAR);
CREATE TABLE IF NOT EXISTS idx_reference (rt VARCHAR, id VARCHAR, param VARCHAR, ref_type VARCHAR,
    ref_id VARCHAR, url VARCHAR, ident_system VARCHAR, ident_value VARCHAR, pid VARCHAR);
CREATE TABLE IF NOT EXISTS idx_date (rt VARCHAR, id VARCHAR, param VARCHAR, lo TIMESTAMPTZ, hi TIMESTAMPTZ,
    pid VARCHAR);
CREATE TABLE IF NOT EXISTS idx_number (rt VARCHAR, id VARCHAR, param VARCHAR, value DOUBLE, pid VARCHAR);
CREATE TABLE IF NOT EXISTS idx_quantity (rt VARCHAR, id VARCHAR, param VARCHAR, value DOUBLE, system VARCHAR,
    code VARCHAR, unit VARCHAR, canon_value DOUBLE, canon_unit VARCHAR, analyte VARCHAR, pid VARCHAR);
CREATE TABLE IF NOT EXISTS idx_uri (rt VARCHAR, id VARCHAR, param VARCHAR, value VARCHAR, pid VARCHAR);
""" + "".join(
    # Point lookups by resource id (updates delete a resource's old rows, _include, sort joins) use
    # these ART indexes instead of scanning tables that grow to tens of millions of rows.
    f"CREATE INDEX IF NOT EXISTS {t}_id ON {t} (id);\n"
    for t in ("idx_token", "idx_string", "idx_reference", "idx_date", "idx_number", "idx_quantity", "idx_uri")
)

_S, _TS, _F = pa.string(), pa.timestamp("us", tz="UTC"), pa.float64()
# Index table -> (columns after rt/id/param with their Arrow types, row splitter, whether the splitter yields
# bare values instead of tuples).
_Splitter = Callable[[Any, str | None], list[Any]]
_TABLES: dict[str, tuple[tuple[tuple[str, pa.DataType], ...], _Splitter, bool]] = {
    "idx_token": ((("system", _S), ("code", _S), ("text", _S)), lambda e, _: rows.token_rows(e), False),
    "idx_string": ((("value", _S), ("raw", _S)), lambda e, _: rows.string_rows(e), False),
    "idx_reference": (
        (("ref_type", _S), ("ref_id", _S), ("url", _S), ("ident_system", _S), ("ident_value", _S)),
        lambda e, _: rows.reference_rows(e),
        False,
    ),
    "idx_date": ((("lo", _TS), ("hi", _TS)), lambda e, _: rows.date_rows(e), False),
    "idx_number": ((("value", _F),), lambda e, _: rows.number_rows(e), True),
    "idx_quantity": (
        (("value", _F), ("system", _S), ("code", _S), ("unit", _S), ("canon_value", _F), ("canon_unit", _S),
         ("analyte", _S)),
        rows.quantity_rows,
        False,
    ),
    "idx_uri": ((("value", _S),), lambda e, _: rows.uri_rows(e), True),
}
INDEX_TABLES = tuple(_TABLES)
TABLE_OF = {
    "token": "idx_token", "string": "idx_string", "reference": "idx_reference", "date": "idx_date",
    "number": "idx_number", "quantity": "idx_quantity", "uri": "idx_uri",
}


SMALL_BATCH = 2000


def keys_predicate(keys: list[tuple[str, str]], staged: str, rt: str = "rt") -> str:
    """Predicate selecting the rows of the given (type, id) keys: literal id lists per type for small
    batches (answered from the ART index on id), a semi-join on the staged table otherwise."""
    if len(keys) > SMALL_BATCH:
        return f"({rt}, id) IN (SELECT resource_type, id FROM {staged})"
    by_type: dict[str, list[str]] = {}
    for rtype, rid in keys:
        by_type.setdefault(rtype, []).append(rid)
    return " OR ".join(
        f"({rt} = {sql_string(rtype)} AND id IN ({', '.join(sql_string(i) for i in ids)}))"
        for rtype, ids in by_type.items()
    )


# Sort keys of the periodic compaction: rows of one patient (pid) sit together, so a search
# anchored on a patient reads a few row groups (DuckDB zone maps) instead of whole tables.
_CLUSTER = {
    "idx_token": "pid, rt, param, code", "idx_string": "pid, rt, param, value",
    "idx_reference": "pid, rt, param, ref_id", "idx_date": "pid, rt, param, lo", "idx_number": "pid, rt, param, value",
    "idx_quantity": "pid, rt, param, canon_value", "idx_uri": "pid, rt, param, value",
}


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create the index tables (idempotent), adding the patient column to tables from older files."""
    con.execute(INDEX_DDL)
    for table in INDEX_TABLES:
        cols = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        if "pid" not in cols:
            con.execute(f"ALTER TABLE {table} ADD COLUMN pid VARCHAR")
            con.execute(
                f"UPDATE {table} SET pid = r.patient_id FROM resources_current r "
                f"WHERE {table}.rt = r.resource_type AND {table}.id = r.id"
            )


def cluster(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite the index tables (and current resources) sorted by patient, then type and value."""
    for table, order in {**_CLUSTER, "resources_current": "patient_id, resource_type, id"}.items():
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM {table} ORDER BY {order}")
        con.execute(f"CREATE INDEX IF NOT EXISTS {table}_id ON {table} (id)")


@cache
def _plan(resource_type: str) -> tuple[Any, tuple[tuple[str, str], ...], tuple[tuple[str, str, str], ...]]:
    """Per type: the generated extractor with the (code, table) of each of its outputs, and
    (code, table, SQL) for expressions it does not handle."""
    params = [
        (p.code, TABLE_OF[p.type], p.expression)
        for p in params_for(resource_type).values()
        if p.expression and p.type in TABLE_OF
    ]
    fn, supported = type_extractor(resource_type, tuple(expr for _, _, expr in params))
    fast = tuple((code, table) for (code, table, _), ok in zip(params, supported, strict=True) if ok)
    slow = tuple(
        (code, table, params_for(resource_type)[code].elements_sql("json::JSON"))
        for (code, table, _), ok in zip(params, supported, strict=True)
        if not ok
    )
    return fn, fast, slow


def _analyte(resource: dict[str, Any]) -> str | None:
    """The resource's first code: molar/mass conversions depend on the analyte."""
    code = resource.get("code")
    coding = code.get("coding") if isinstance(code, dict) else None
    first = coding[0] if isinstance(coding, list) and coding else None
    return first.get("code") if isinstance(first, dict) else None


# Indexed from the commit timestamp by the writer (``stamp_rows``), not from the resource: prepared rows
# must not depend on the version the store has yet to assign.
STAMPED = "_lastUpdated"


def _arrow_table(
    table: str, values: list[Any], rt: pa.Array, ids: pa.Array, params: list[str], pids: pa.Array, pos: pa.Array
) -> pa.Table:
    """One index table's rows as Arrow: the key columns, one column per split value, and ``pos`` (the
    resource's position in its batch, so a writer can drop the rows of resources it does not store)."""
    cols, _, bare = _TABLES[table]
    value_cols = [values] if bare else list(zip(*values, strict=True))
    arrays = [rt, ids, pa.array(params, _S)]
    arrays += [pa.array(col, type=t) for col, (_, t) in zip(value_cols, cols, strict=True)]
    return pa.Table.from_arrays(
        [*arrays, pids, pos], names=["rt", "id", "param", *(n for n, _ in cols), "pid", "pos"]
    )


def index_tables(resources: Sequence[dict[str, Any]], pids: Sequence[str | None]) -> dict[str, pa.Table]:
    """Index rows of the Python-extracted parameters of ``resources`` (ids assigned), per index table.

    Pure (no database), so bulk import runs it in worker processes. Rows are gathered per table as
    value tuples with parallel position/parameter lists; the type, id and patient columns are taken from
    per-resource arrays by position, so no per-row key tuple is built.
    """
    values: dict[str, list[Any]] = {t: [] for t in INDEX_TABLES}
    positions: dict[str, list[int]] = {t: [] for t in INDEX_TABLES}
    params: dict[str, list[str]] = {t: [] for t in INDEX_TABLES}
    for i, res in enumerate(resources):
        fn, fast, _ = _plan(res["resourceType"])
        analyte = _analyte(res)
        for (code, table), elements in zip(fast, fn(res), strict=True):
            if not elements or code == STAMPED:
                continue
            split = _TABLES[table][1]
            found: list[Any] = []
            for element in elements:
                found += split(element, analyte)
            if found:
                values[table] += found
                positions[table] += [i] * len(found)
                params[table] += [code] * len(found)
    if not resources:
        return {}
    rt = pa.array([r["resourceType"] for r in resources], _S)
    ids = pa.array([r["id"] for r in resources], _S)
    pid = pa.array(pids, _S)
    out: dict[str, pa.Table] = {}
    for table, pos_list in positions.items():
        if pos_list:
            pos = pa.array(pos_list, pa.int32())
            out[table] = _arrow_table(table, values[table], rt.take(pos), ids.take(pos), params[table],
                                      pid.take(pos), pos)
    return out


def _fallback_tables(con: duckdb.DuckDBPyConnection, staged: str, rtypes: set[str]) -> dict[str, pa.Table]:
    """Index rows of the parameters compiled to SQL, read from the staged JSON."""
    values: dict[str, list[Any]] = {t: [] for t in INDEX_TABLES}
    keys: dict[str, list[tuple[str, str, str, str | None]]] = {t: [] for t in INDEX_TABLES}
    for rtype in sorted(rtypes):
        _, _, slow = _plan(rtype)
        if not slow:
            continue
        select = ", ".join(sql for _, _, sql in slow)
        for rid, pid, analyte, *lists in con.execute(
            f"SELECT id, patient_id, json_extract_string(json, '$.code.coding[0].code'), {select} "
            f"FROM {staged} WHERE resource_type = {sql_string(rtype)} AND NOT deleted"
        ).fetchall():
            for (code, table, _), elements in zip(slow, lists, strict=True):
                for element in elements or ():
                    found = _TABLES[table][1](orjson.loads(element), analyte)
                    values[table] += found
                    keys[table] += [(rtype, rid, code, pid)] * len(found)
    out: dict[str, pa.Table] = {}
    for table, key_rows in keys.items():
        if key_rows:
            rt, ids, params, pids = (list(c) for c in zip(*key_rows, strict=True))
            out[table] = _arrow_table(table, values[table], pa.array(rt, _S), pa.array(ids, _S), params,
                                      pa.array(pids, _S), pa.array(range(len(rt)), pa.int32()))
    return out


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows_table: pa.Table) -> None:
    con.register("_index_rows", rows_table)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * EXCLUDE (pos) FROM _index_rows")
    finally:
        con.unregister("_index_rows")


def index_batch(
    con: duckdb.DuckDBPyConnection,
    staged: str,
    tables: dict[str, pa.Table],
    replaced: list[tuple[str, str]],
    stamp: tuple[datetime, datetime] | None,
) -> None:
    """Index a staged batch whose Python-extracted rows are ``tables``; first drop the entries of the
    resources it replaces. The SQL-compiled parameters are read from the staged JSON, and every staged
    resource gets the ``_lastUpdated`` range ``stamp`` of its commit (None for deletions)."""
    if replaced:
        predicate = keys_predicate(replaced, staged)
        for table in INDEX_TABLES:
            con.execute(f"DELETE FROM {table} WHERE {predicate}")
    if stamp is None:
        return
    rtypes = {r[0] for r in con.execute(f"SELECT DISTINCT resource_type FROM {staged}").fetchall()}
    for table, rows_table in (*tables.items(), *_fallback_tables(con, staged, rtypes).items()):
        _insert(con, table, rows_table)
    stamped = sorted(t for t in rtypes if STAMPED in params_for(t))
    if stamped:
        con.execute(
            f"INSERT INTO idx_date (rt, id, param, lo, hi, pid) SELECT resource_type, id, '{STAMPED}', ?, ?, "
            f"patient_id FROM {staged} WHERE resource_type IN ({', '.join(sql_string(t) for t in stamped)})",
            list(stamp),
        )
