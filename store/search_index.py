"""Search index tables, filled at write time from the R4 SearchParameter definitions.

For each resource in a write batch, every search parameter's elements are
listed (``store.extract`` in Python for the simple expressions, the
FHIRPath→SQL compiler for the others), split into typed rows
(``store.index_rows``), and appended with one ``INSERT`` per index table. It
runs inside the writer's transaction, so the index is never behind the
resources it describes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from mapping.fhirpath.values import sql_string
from store import index_rows as rows
from store.compartment import patients_of
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
# Index table -> (columns after rt/id/param with their Arrow types, row splitter).
_TABLES: dict[str, tuple[tuple[tuple[str, pa.DataType], ...], Callable[[Any, str | None], list[Any]]]] = {
    "idx_token": ((("system", _S), ("code", _S), ("text", _S)), lambda e, _: rows.token_rows(e)),
    "idx_string": ((("value", _S), ("raw", _S)), lambda e, _: rows.string_rows(e)),
    "idx_reference": (
        (("ref_type", _S), ("ref_id", _S), ("url", _S), ("ident_system", _S), ("ident_value", _S)),
        lambda e, _: rows.reference_rows(e),
    ),
    "idx_date": ((("lo", _TS), ("hi", _TS)), lambda e, _: rows.date_rows(e)),
    "idx_number": ((("value", _F),), lambda e, _: [(v,) for v in rows.number_rows(e)]),
    "idx_quantity": (
        (("value", _F), ("system", _S), ("code", _S), ("unit", _S), ("canon_value", _F), ("canon_unit", _S),
         ("analyte", _S)),
        lambda e, analyte: [(*r, analyte) for r in rows.quantity_rows(e, analyte)],
    ),
    "idx_uri": ((("value", _S),), lambda e, _: [(v,) for v in rows.uri_rows(e)]),
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


def _fallback_elements(
    con: duckdb.DuckDBPyConnection, staged: str, rtype: str, slow: tuple[tuple[str, str, str], ...]
) -> dict[str, list[tuple[str, str, list[Any]]]]:
    """Elements of the SQL-compiled parameters: id -> [(code, table, elements)]."""
    out: dict[str, list[tuple[str, str, list[Any]]]] = {}
    select = ", ".join(sql for _, _, sql in slow)
    for rid, *lists in con.execute(
        f"SELECT id, {select} FROM {staged} WHERE resource_type = {sql_string(rtype)} AND NOT deleted"
    ).fetchall():
        for (code, table, _), values in zip(slow, lists, strict=True):
            if values:
                out.setdefault(rid, []).append((code, table, [orjson.loads(v) for v in values]))
    return out


def index_batch(
    con: duckdb.DuckDBPyConnection,
    staged: str,
    resources: list[dict[str, Any]],
    replaced: list[tuple[str, str]],
) -> None:
    """Index a staged batch; first drop the entries of the resources it replaces."""
    if replaced:
        predicate = keys_predicate(replaced, staged)
        for table in INDEX_TABLES:
            con.execute(f"DELETE FROM {table} WHERE {predicate}")
    if not resources:
        return
    out: dict[str, list[tuple[Any, ...]]] = {t: [] for t in INDEX_TABLES}
    fallbacks: dict[str, dict[str, list[tuple[str, str, list[Any]]]]] = {}
    for rtype in {r["resourceType"] for r in resources}:
        _, _, slow = _plan(rtype)
        if slow:
            fallbacks[rtype] = _fallback_elements(con, staged, rtype, slow)
    for res in resources:
        rtype, rid = res["resourceType"], res["id"]
        analyte = _analyte(res)
        pats = patients_of(res)
        pid = pats[0] if pats else None
        fn, fast, _ = _plan(rtype)
        found = [(code, table, elements) for (code, table), elements in zip(fast, fn(res), strict=True)]
        found += fallbacks.get(rtype, {}).get(rid, [])
        for code, table, elements in found:
            split = _TABLES[table][1]
            sink = out[table]
            for element in elements:
                for row in split(element, analyte):
                    sink.append((rtype, rid, code, *row, pid))
    for table, table_rows in out.items():
        if not table_rows:
            continue
        cols, _ = _TABLES[table]
        names = ["rt", "id", "param", *(n for n, _ in cols), "pid"]
        types = [_S, _S, _S, *(t for _, t in cols), _S]
        batch = pa.table(
            [pa.array(list(col), type=t) for col, t in zip(zip(*table_rows, strict=True), types, strict=True)],
            names=names,
        )
        con.register("_index_rows", batch)
        try:
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _index_rows")
        finally:
            con.unregister("_index_rows")
