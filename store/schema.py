"""DDL of the feature store.

FHIR JSON is the record: every write appends a row to ``resource_versions`` and
replaces the row in ``resources_current``; the ``resources`` view is what the
view engine, search and twins read (current, not deleted). Search index tables
are filled by the writer in the same transaction as the resource rows, so a
search never sees a resource without its index entries or the other way round.
"""

from __future__ import annotations

import duckdb

# The bodies are compressed with zstd, not DuckDB's default choice for strings (dictionary + FSST):
# on Synthea bulk imports that costs ~3 µs less CPU per resource and table at the commit's
# checkpoint and makes the file ~40 % smaller; a full scan of the bodies is no slower. A point read of
# one body from the file takes ~0.2 ms longer (a vector of bodies is decompressed), which only reads
# past the writer's map of current versions pay (docs/benchmarks/ingest.md).
RESOURCE_COLUMNS = (
    "resource_type VARCHAR NOT NULL, id VARCHAR NOT NULL, version_id BIGINT NOT NULL, "
    "last_updated TIMESTAMPTZ NOT NULL, deleted BOOLEAN NOT NULL, patient_id VARCHAR, "
    "content_hash VARCHAR, json JSON USING COMPRESSION zstd"
)

DDL = f"""
CREATE TABLE IF NOT EXISTS resource_versions ({RESOURCE_COLUMNS}, method VARCHAR);
CREATE TABLE IF NOT EXISTS resources_current ({RESOURCE_COLUMNS});
CREATE INDEX IF NOT EXISTS resources_current_id ON resources_current (id);
CREATE OR REPLACE VIEW resources AS
    SELECT resource_type, id, version_id, last_updated, deleted, patient_id, json
    FROM resources_current WHERE NOT deleted;
CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS dead_letters (
    dl_id VARCHAR PRIMARY KEY, received TIMESTAMPTZ NOT NULL, source VARCHAR, line BIGINT,
    format VARCHAR, raw VARCHAR, reason JSON, replayed BOOLEAN NOT NULL DEFAULT false
);
"""


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the store's tables if the database is new; idempotent."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute(DDL)
    if not has_column(con, "resource_versions", "method"):  # a file from before history kept the REST method
        con.execute("ALTER TABLE resource_versions ADD COLUMN method VARCHAR")


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """Whether ``table`` of the current schema has ``column``."""
    return con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE schema_name = current_schema() AND table_name = ? "
        "AND column_name = ?", [table, column]
    ).fetchone()[0] > 0
