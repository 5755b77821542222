"""Search index tables, filled at write time from the R4 SearchParameter definitions.

For each resource in a write batch, every search parameter's elements are
listed (``store.extract`` in Python for the simple expressions, the
FHIRPath→SQL compiler for the others), split into typed rows
(``store.index_rows``), and appended with one ``INSERT`` per index table. It
runs inside the writer's transaction, so the index is never behind the
resources it describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa

from mapping.fhirpath.values import sql_string
from store import index_rows as rows
from store.extract import Indexer, Sink, type_extractor, type_indexer
from store.schema import has_column
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
# Index table -> (columns after rt/id/param with their Arrow types, splitter appending an element list's rows).
_TABLES: dict[str, tuple[tuple[tuple[str, pa.DataType], ...], Sink]] = {
    "idx_token": ((("system", _S), ("code", _S), ("text", _S)), rows.token_into),
    "idx_string": ((("value", _S), ("raw", _S)), rows.string_into),
    "idx_reference": (
        (("ref_type", _S), ("ref_id", _S), ("url", _S), ("ident_system", _S), ("ident_value", _S)),
        rows.reference_into,
    ),
    "idx_date": ((("lo", _TS), ("hi", _TS)), rows.date_into),
    "idx_number": ((("value", _F),), rows.number_into),
    "idx_quantity": (
        (("value", _F), ("system", _S), ("code", _S), ("unit", _S), ("canon_value", _F), ("canon_unit", _S),
         ("analyte", _S)),
        rows.quantity_into,
    ),
    "idx_uri": ((("value", _S),), rows.uri_into),
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
        if not has_column(con, table, "pid"):
            con.execute(f"ALTER TABLE {table} ADD COLUMN pid VARCHAR")
            con.execute(
                f"UPDATE {table} SET pid = r.patient_id FROM resources_current r "
                f"WHERE {table}.rt = r.resource_type AND {table}.id = r.id"
            )


CLUSTERED = {**_CLUSTER, "resources_current": "patient_id, resource_type, id"}
"""Tables :func:`cluster` rewrites, and their order: patient, then type and value."""


def cluster(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Rewrite ``table`` (one of :data:`CLUSTERED`) sorted by patient, then type and value, into a table
    of the same definition (``CREATE TABLE … AS`` would drop the columns' compression settings)."""
    ddl = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = ? AND schema_name = current_schema()",
                      [table]).fetchone()[0]
    con.execute(f"DROP INDEX IF EXISTS {table}_id")
    con.execute(f"ALTER TABLE {table} RENAME TO {table}_unsorted")
    con.execute(ddl)
    con.execute(f"INSERT INTO {table} SELECT * FROM {table}_unsorted ORDER BY {CLUSTERED[table]}")
    con.execute(f"DROP TABLE {table}_unsorted")
    con.execute(f"CREATE INDEX IF NOT EXISTS {table}_id ON {table} (id)")


UNINDEXED = frozenset({"_id", "_lastUpdated"})
"""Parameters without index rows: every search path reads the resource's id and commit time (SQL
from the resources' columns, the patient cache from the times it holds), so a row per resource for
each, which the writer and the workers made for nothing, is left out."""


@cache
def _plan(resource_type: str) -> tuple[Indexer, tuple[tuple[str, str], ...], tuple[tuple[str, str, str], ...]]:
    """Per type: the generated indexer feeding the splitters of the (code, table) it handles, and
    (code, table, SQL) for expressions it does not handle."""
    params = [
        (p.code, TABLE_OF[p.type], p.expression)
        for p in params_for(resource_type).values()
        if p.expression and p.type in TABLE_OF and p.code not in UNINDEXED
    ]
    _, supported = type_extractor(resource_type, tuple(expr for _, _, expr in params))
    fast = tuple((code, table) for (code, table, _), ok in zip(params, supported, strict=True) if ok)
    slow = tuple(
        (code, table, params_for(resource_type)[code].elements_sql("json::JSON"))
        for (code, table, _), ok in zip(params, supported, strict=True)
        if not ok
    )
    indexer = type_indexer(resource_type, tuple(
        (expr, _TABLES[table][1], INDEX_TABLES.index(table), code)
        for (code, table, expr), ok in zip(params, supported, strict=True)
        if ok
    ))
    return indexer, fast, slow


def analyte_of(resource: dict[str, Any]) -> str | None:
    """The resource's first code: molar/mass conversions depend on the analyte."""
    code = resource.get("code")
    coding = code.get("coding") if isinstance(code, dict) else None
    first = coding[0] if isinstance(coding, list) and coding else None
    return first.get("code") if isinstance(first, dict) else None


def _column_sets() -> tuple[rows.Columns, ...]:
    """Empty columns (runs, then value columns) of every index table, in ``INDEX_TABLES`` order."""
    return tuple([[] for _ in range(rows.VALUES + len(cols))] for cols, _ in _TABLES.values())


def _arrow_tables(
    column_sets: tuple[rows.Columns, ...], rt: pa.Array, ids: pa.Array, pids: pa.Array
) -> dict[str, pa.Table]:
    """Index rows as Arrow tables: the runs expanded into ``pos`` (the resource's position in its
    batch, so a writer can drop the rows of resources it does not store) and ``param``, the key
    columns taken from per-resource arrays by position, one column per split value."""
    out: dict[str, pa.Table] = {}
    for table, (run_pos, run_params, run_rows, *values) in zip(INDEX_TABLES, column_sets, strict=True):
        if not run_pos:
            continue
        cols = _TABLES[table][0]
        counts = np.array(run_rows, np.int64)
        pos = pa.array(np.repeat(np.array(run_pos, np.int32), counts))
        params = pa.array(run_params, _S).take(pa.array(np.repeat(np.arange(len(run_pos), dtype=np.int32), counts)))
        arrays = [rt.take(pos), ids.take(pos), params]
        arrays += [pa.array(col, type=t) for col, (_, t) in zip(values, cols, strict=True)]
        out[table] = pa.Table.from_arrays(
            [*arrays, pids.take(pos), pos], names=["rt", "id", "param", *(n for n, _ in cols), "pid", "pos"]
        )
    return out


def index_tables(resources: Sequence[dict[str, Any]], pids: Sequence[str | None]) -> dict[str, pa.Table]:
    """Index rows of the Python-extracted parameters of ``resources`` (ids assigned), per index table.

    Pure (no database), so bulk import runs it in worker processes. Each type's generated indexer
    hands every non-empty parameter to its table's splitter, which appends straight into that
    table's column lists; the type, id and patient columns are taken from per-resource arrays.
    """
    if not resources:
        return {}
    column_sets = _column_sets()
    for i, res in enumerate(resources):
        _plan(res["resourceType"])[0](res, i, column_sets, analyte_of(res))
    rt = pa.array([r["resourceType"] for r in resources], _S)
    ids = pa.array([r["id"] for r in resources], _S)
    return _arrow_tables(column_sets, rt, ids, pa.array(pids, _S))


def _fallback_tables(con: duckdb.DuckDBPyConnection, staged: str, rtypes: set[str]) -> dict[str, pa.Table]:
    """Index rows of the parameters compiled to SQL, read from the staged JSON of the current rows."""
    column_sets = _column_sets()
    keys: list[tuple[str, str, str | None]] = []
    for rtype in sorted(rtypes):
        _, _, slow = _plan(rtype)
        if not slow:
            continue
        select = ", ".join(sql for _, _, sql in slow)
        for rid, pid, analyte, *lists in con.execute(
            f"SELECT id, patient_id, json_extract_string(json, '$.code.coding[0].code'), {select} "
            f"FROM {staged} WHERE resource_type = {sql_string(rtype)} AND is_current AND NOT deleted"
        ).fetchall():
            for (code, table, _), elements in zip(slow, lists, strict=True):
                if elements:
                    number = INDEX_TABLES.index(table)
                    _TABLES[table][1](column_sets[number], [orjson.loads(e) for e in elements], len(keys), code,
                                      analyte)
            keys.append((rtype, rid, pid))
    if not keys:
        return {}
    rt, ids, pids = (pa.array(list(c), _S) for c in zip(*keys, strict=True))
    return _arrow_tables(column_sets, rt, ids, pids)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows_table: pa.Table) -> None:
    """Insert index rows. They are read by their variable's name (DuckDB's replacement scan of the
    calling frame): registering and unregistering them as a view cost ~0.6 ms more per table."""
    _index_rows = rows_table  # noqa: F841 - read by name in the statement below
    con.execute(f"INSERT INTO {table} BY NAME SELECT * EXCLUDE (pos) FROM _index_rows")


def index_batch(
    con: duckdb.DuckDBPyConnection,
    staged: str,
    tables: Sequence[dict[str, pa.Table]] | None,
    replaced: list[tuple[str, str]],
    rtypes: set[str],
) -> None:
    """Index the current rows (``is_current``, of types ``rtypes``) of a staged transaction whose
    Python-extracted rows are ``tables`` (one dict per source batch); first drop the entries of the
    resources it replaces.
    The SQL-compiled parameters are read from the staged JSON (see :data:`UNINDEXED` for what gets no
    rows). ``tables`` None: deletions, nothing to index."""
    if replaced:
        predicate = keys_predicate(replaced, staged)
        for table in INDEX_TABLES:
            con.execute(f"DELETE FROM {table} WHERE {predicate}")
    if tables is None:
        return
    parts: dict[str, list[pa.Table]] = {}
    for batch_tables in (*tables, _fallback_tables(con, staged, rtypes)):
        for table, rows_table in batch_tables.items():
            if len(rows_table):
                parts.setdefault(table, []).append(rows_table)
    for table, tables_of in parts.items():
        _insert(con, table, pa.concat_tables(tables_of))
