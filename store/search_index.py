"""Search index tables, filled at write time from the compiled SearchParameter expressions.

For every resource type in a write batch, one ``INSERT … SELECT`` per index
table lists each parameter's elements with the compiled FHIRPath SQL and
splits them into typed rows (token system/code, normalized strings, date
ranges, canonical quantities, reference targets). It runs inside the writer's
transaction, so the index is never behind the resources it describes.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from mapping.fhirpath.values import sql_string
from mapping.ucum import canonical
from store.extract import extractor
from store.search_params import params_for

INDEX_DDL = """
CREATE TABLE IF NOT EXISTS idx_token (rt VARCHAR, id VARCHAR, param VARCHAR, system VARCHAR, code VARCHAR,
    text VARCHAR);
CREATE TABLE IF NOT EXISTS idx_string (rt VARCHAR, id VARCHAR, param VARCHAR, value VARCHAR, raw VARCHAR);
CREATE TABLE IF NOT EXISTS idx_reference (rt VARCHAR, id VARCHAR, param VARCHAR, ref_type VARCHAR,
    ref_id VARCHAR, url VARCHAR, ident_system VARCHAR, ident_value VARCHAR);
CREATE TABLE IF NOT EXISTS idx_date (rt VARCHAR, id VARCHAR, param VARCHAR, lo TIMESTAMPTZ, hi TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS idx_number (rt VARCHAR, id VARCHAR, param VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS idx_quantity (rt VARCHAR, id VARCHAR, param VARCHAR, value DOUBLE, system VARCHAR,
    code VARCHAR, unit VARCHAR, canon_value DOUBLE, canon_unit VARCHAR, analyte VARCHAR);
CREATE TABLE IF NOT EXISTS idx_uri (rt VARCHAR, id VARCHAR, param VARCHAR, value VARCHAR);
CREATE OR REPLACE MACRO fhir_norm(s) AS lower(strip_accents(s));
CREATE OR REPLACE MACRO fhir_date_lo(s) AS CASE
    WHEN s IS NULL THEN NULL
    WHEN length(s) = 4 THEN TRY_CAST(s || '-01-01T00:00:00Z' AS TIMESTAMPTZ)
    WHEN length(s) = 7 THEN TRY_CAST(s || '-01T00:00:00Z' AS TIMESTAMPTZ)
    WHEN length(s) = 10 THEN TRY_CAST(s || 'T00:00:00Z' AS TIMESTAMPTZ)
    ELSE TRY_CAST(s AS TIMESTAMPTZ) END;
CREATE OR REPLACE MACRO fhir_date_hi(s) AS CASE
    WHEN s IS NULL THEN NULL
    WHEN length(s) = 4 THEN fhir_date_lo(s) + INTERVAL 1 YEAR
    WHEN length(s) = 7 THEN fhir_date_lo(s) + INTERVAL 1 MONTH
    WHEN length(s) = 10 THEN fhir_date_lo(s) + INTERVAL 1 DAY
    WHEN length(s) <= 16 THEN fhir_date_lo(s) + INTERVAL 1 MINUTE
    ELSE fhir_date_lo(s) + INTERVAL 1 SECOND END;
"""

INDEX_TABLES = ("idx_token", "idx_string", "idx_reference", "idx_date", "idx_number", "idx_quantity", "idx_uri")
_TABLE_OF = {
    "token": "idx_token",
    "string": "idx_string",
    "reference": "idx_reference",
    "date": "idx_date",
    "number": "idx_number",
    "quantity": "idx_quantity",
    "uri": "idx_uri",
}
_NAME_AND_ADDRESS_PARTS = (
    "text", "family", "given[*]", "prefix[*]", "suffix[*]", "line[*]", "city", "district", "state",
    "postalCode", "country",
)
_NAME_PARTS_SQL = ", ".join(
    f"coalesce(json_extract_string(e, '$.{p}'), [])" if p.endswith("[*]") else f"[e ->> '{p}']"
    for p in _NAME_AND_ADDRESS_PARTS
)
_REF_PATTERN = sql_string(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-\.]{1,64})(?:/_history/[^/]*)?$")

# How each table splits an element ``e`` (JSON) of the CTE ``el(rt, id, param, e)`` into rows.
_SPLIT = {
    "idx_token": """
        SELECT rt, id, param, c ->> 'system', c ->> 'code', fhir_norm(c ->> 'display') FROM el,
            unnest(json_extract(e, '$.coding[*]')) AS u(c) WHERE json_type(e) = 'OBJECT'
        UNION ALL SELECT rt, id, param, NULL, NULL, fhir_norm(e ->> 'text') FROM el
            WHERE json_type(e) = 'OBJECT' AND e ->> 'text' IS NOT NULL
        UNION ALL SELECT rt, id, param, e ->> 'system', coalesce(e ->> 'code', e ->> 'value'),
            fhir_norm(coalesce(e ->> 'display', e ->> '$.type.text')) FROM el
            WHERE json_type(e) = 'OBJECT' AND coalesce(e ->> 'code', e ->> 'value') IS NOT NULL
        UNION ALL SELECT rt, id, param, NULL, e ->> '$', NULL FROM el WHERE json_type(e) <> 'OBJECT'
    """,
    "idx_string": f"""
        SELECT rt, id, param, fhir_norm(s), s FROM (
            SELECT rt, id, param, e ->> '$' AS s FROM el WHERE json_type(e) = 'VARCHAR'
            UNION ALL SELECT rt, id, param, unnest(flatten([{_NAME_PARTS_SQL}])) AS s FROM el
                WHERE json_type(e) = 'OBJECT'
        ) WHERE s IS NOT NULL AND s <> ''
    """,
    "idx_reference": f"""
        SELECT rt, id, param, regexp_extract(r, {_REF_PATTERN}, 1), regexp_extract(r, {_REF_PATTERN}, 2), r,
            ident_system, ident_value FROM (
            SELECT rt, id, param,
                CASE WHEN json_type(e) = 'OBJECT' THEN e ->> 'reference' ELSE e ->> '$' END AS r,
                e ->> '$.identifier.system' AS ident_system, e ->> '$.identifier.value' AS ident_value
            FROM el) WHERE r IS NOT NULL OR ident_value IS NOT NULL
    """,
    "idx_date": """
        SELECT rt, id, param, coalesce(fhir_date_lo(lo_s), '-infinity'::TIMESTAMPTZ),
            coalesce(fhir_date_hi(hi_s), 'infinity'::TIMESTAMPTZ) FROM (
            SELECT rt, id, param, e ->> '$' AS lo_s, e ->> '$' AS hi_s FROM el WHERE json_type(e) = 'VARCHAR'
            UNION ALL SELECT rt, id, param, e ->> 'start', e ->> 'end' FROM el
                WHERE json_type(e) = 'OBJECT' AND (e ->> 'start' IS NOT NULL OR e ->> 'end' IS NOT NULL)
            UNION ALL SELECT rt, id, param, ev, ev FROM (
                SELECT rt, id, param, unnest(json_extract_string(e, '$.event[*]')) AS ev FROM el
                WHERE json_type(e) = 'OBJECT')
        ) WHERE lo_s IS NOT NULL OR hi_s IS NOT NULL
    """,
    "idx_number": """
        SELECT rt, id, param, TRY_CAST(e ->> '$' AS DOUBLE) FROM el WHERE json_type(e) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
    """,
    "idx_quantity": """
        SELECT rt, id, param, v, sys, code, unit, ucum_canon_value(v, code, analyte),
            ucum_canon_unit(v, code, analyte), analyte FROM (
            SELECT rt, id, param, TRY_CAST(e ->> 'value' AS DOUBLE) AS v, e ->> 'system' AS sys,
                coalesce(e ->> 'code', e ->> 'unit') AS code, e ->> 'unit' AS unit, analyte
            FROM el WHERE json_type(e) = 'OBJECT') WHERE v IS NOT NULL
    """,
    "idx_uri": """
        SELECT rt, id, param, e ->> '$' FROM el WHERE json_type(e) = 'VARCHAR'
    """,
}


@lru_cache(maxsize=4096)
def _affine(code: str, analyte: str | None) -> tuple[float, float, str] | None:
    """UCUM conversions are affine (Celsius has an offset): cache slope, offset and canonical unit."""
    try:
        one, zero = canonical(1.0, code, analyte=analyte), canonical(0.0, code, analyte=analyte)
    except ValueError:
        return None
    if one is None or zero is None:
        return None
    return one[0] - zero[0], zero[0], one[1]


def _canon(value: float | None, code: str | None, analyte: str | None) -> tuple[float, str] | None:
    if value is None or not code:
        return None
    conv = _affine(code, analyte)
    return (value * conv[0] + conv[1], conv[2]) if conv else None


def _canon_value(value: float | None, code: str | None, analyte: str | None) -> float | None:
    out = _canon(value, code, analyte)
    return out[0] if out else None


def _canon_unit(value: float | None, code: str | None, analyte: str | None) -> str | None:
    out = _canon(value, code, analyte)
    return out[1] if out else None


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create the index tables and register the UDFs the indexer uses on this connection."""
    con.execute(INDEX_DDL)
    for name, fn, ret in (("ucum_canon_value", _canon_value, "DOUBLE"), ("ucum_canon_unit", _canon_unit, "VARCHAR")):
        con.create_function(name, fn, ["DOUBLE", "VARCHAR", "VARCHAR"], ret, null_handling="special")


@cache
def _plan(resource_type: str) -> tuple[tuple[tuple[str, str, Any], ...], dict[str, tuple[str, ...]]]:
    """Per type: (param code, table, Python extractor) for the simple expressions, and per table the
    codes whose expressions need the SQL compiler."""
    fast: list[tuple[str, str, Any]] = []
    slow: dict[str, list[str]] = {}
    for p in params_for(resource_type).values():
        table = _TABLE_OF.get(p.type)
        if not p.expression or table is None:
            continue
        fn = extractor(p.expression, resource_type)
        if fn is not None:
            fast.append((p.code, table, fn))
        else:
            slow.setdefault(table, []).append(p.code)
    return tuple(fast), {t: tuple(c) for t, c in slow.items()}


_ELEMENT_SCHEMA = pa.schema(
    [("rt", pa.string()), ("id", pa.string()), ("param", pa.string()), ("tbl", pa.string()),
     ("e", pa.string()), ("analyte", pa.string())]
)


def element_rows(resources: list[dict[str, Any]]) -> pa.Table:
    """Every indexed element of every resource, as (type, id, param, target table, element JSON, analyte)."""
    cols: dict[str, list[Any]] = {name: [] for name in _ELEMENT_SCHEMA.names}
    rt_col, id_col, param_col, tbl_col, e_col, an_col = cols.values()
    dumps = orjson.dumps
    for res in resources:
        rtype, rid = res["resourceType"], res["id"]
        fast, _ = _plan(rtype)
        coding = (res.get("code") or {}).get("coding") if isinstance(res.get("code"), dict) else None
        analyte = coding[0].get("code") if coding and isinstance(coding[0], dict) else None
        for code, table, fn in fast:
            for element in fn(res):
                rt_col.append(rtype)
                id_col.append(rid)
                param_col.append(code)
                tbl_col.append(table)
                e_col.append(dumps(element).decode())
                an_col.append(analyte)
    return pa.table(cols, schema=_ELEMENT_SCHEMA)


@cache
def insert_sql(resource_type: str, table: str, staged: str, elements: str) -> str:
    """The statement indexing the ``resource_type`` rows of a batch into ``table``.

    Elements come from the Python extraction (``elements``) plus, for parameters
    whose expressions the extractor does not handle, the compiled FHIRPath SQL over
    the staged JSON.
    """
    _, slow = _plan(resource_type)
    rtype = sql_string(resource_type)
    selects = [
        f"SELECT rt, id, param, e::JSON AS e, analyte FROM {elements} WHERE rt = {rtype} AND tbl = {sql_string(table)}"
    ]
    params = params_for(resource_type)
    for code in slow.get(table, ()):
        selects.append(
            f"SELECT resource_type AS rt, id, {sql_string(code)} AS param, unnest({params[code].elements_sql('j')}) AS e, "
            f"analyte FROM (SELECT resource_type, id, json::JSON AS j, "
            f"json_extract_string(json::JSON, '$.code.coding[0].code') AS analyte FROM {staged} "
            f"WHERE resource_type = {rtype} AND NOT deleted)"
        )
    return f"INSERT INTO {table} WITH el AS MATERIALIZED ({' UNION ALL '.join(selects)}) {_SPLIT[table]}"


def index_batch(
    con: duckdb.DuckDBPyConnection, staged: str, resources: list[dict[str, Any]], replaces: bool
) -> None:
    """Index a staged batch; drop the previous entries first when it replaces existing resources."""
    if replaces:
        for table in INDEX_TABLES:
            con.execute(f"DELETE FROM {table} AS t USING {staged} AS s WHERE t.rt = s.resource_type AND t.id = s.id")
    if not resources:
        return
    elements = element_rows(resources)
    con.register("_elements", elements)
    try:
        present = set(elements.column("tbl").to_pylist())
        for rtype in sorted({r["resourceType"] for r in resources}):
            _, slow = _plan(rtype)
            for table in INDEX_TABLES:
                if table in present or table in slow:
                    con.execute(insert_sql(rtype, table, staged, "_elements"))
    finally:
        con.unregister("_elements")
