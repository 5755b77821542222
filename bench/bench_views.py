"""Benchmark: the compiled `vital_signs` ViewDefinition vs hand-written DuckDB SQL of the same view.

Builds a DuckDB file under /tmp with >= 1M Observation resources (the Synthea Observations
replicated with fresh ids, in the store's `resources` column layout), then materializes both
queries into a temp table, best of --repeat runs each, same process, same data::

    .venv/bin/python bench/bench_views.py [--n 1000000] [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import duckdb

from mapping.viewdef import compile_view
from mapping.views import load_view

SYNTHEA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "synthea" / "ndjson" / "Observation.000.ndjson"
DB = Path("/tmp/fhirtwin_bench_views.duckdb")
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category"

HAND_WRITTEN = f"""
WITH obs AS (
  SELECT json, json_extract_string(json, '$.id') AS id,
         regexp_extract(json_extract_string(json, '$.subject.reference'), '([^/]+)$', 1) AS patient_id,
         json_extract_string(json, '$.effectiveDateTime') AS effective_time
  FROM resources
  WHERE resource_type = 'Observation'
    AND json_extract_string(json, '$.status') NOT IN ('entered-in-error', 'cancelled')
    AND len(list_filter(json_extract(json, '$.category[*].coding[*]'),
            lambda c: c->>'system' = '{VITALS}' AND c->>'code' = 'vital-signs')) > 0
)
SELECT id, patient_id, effective_time,
       list_filter(json_extract(json, '$.code.coding[*]'), lambda c: c->>'system' = 'http://loinc.org')[1]->>'code'
         AS loinc,
       CAST(json_extract(json, '$.valueQuantity.value') AS DOUBLE) AS value,
       json_extract_string(json, '$.valueQuantity.code') AS unit
FROM obs WHERE json_extract(json, '$.valueQuantity') IS NOT NULL
UNION ALL
SELECT id, patient_id, effective_time,
       list_filter(json_extract(comp, '$.code.coding[*]'), lambda c: c->>'system' = 'http://loinc.org')[1]->>'code',
       CAST(json_extract(comp, '$.valueQuantity.value') AS DOUBLE),
       json_extract_string(comp, '$.valueQuantity.code')
FROM obs, unnest(json_extract(json, '$.component[*]')) AS t(comp)
WHERE json_extract(comp, '$.valueQuantity') IS NOT NULL
"""


def build(n: int) -> int:
    """(Re)create the benchmark file with at least ``n`` Observations; return the count."""
    con = duckdb.connect(str(DB))
    have = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'resources'").fetchone()[0]
    if have and con.execute("SELECT count(*) FROM resources").fetchone()[0] >= n:
        count = con.execute("SELECT count(*) FROM resources").fetchone()[0]
        con.close()
        return count
    con.execute("CREATE OR REPLACE TEMP TABLE seed AS SELECT json FROM read_json_objects(?, format='newline_delimited')",
                [str(SYNTHEA)])
    seeds = con.execute("SELECT count(*) FROM seed").fetchone()[0]
    copies = -(-n // seeds)
    con.execute("""CREATE OR REPLACE TABLE resources AS
        SELECT 'Observation' AS resource_type, new_id AS id, 1::BIGINT AS version_id, now() AS last_updated,
               FALSE AS deleted, regexp_extract(json_extract_string(json, '$.subject.reference'), '([^/]+)$', 1)
               AS patient_id, json_merge_patch(json, json_object('id', new_id)) AS json
        FROM (SELECT json, json_extract_string(json, '$.id') || '-' || k AS new_id
              FROM seed, range(?) AS r(k))""", [copies])
    count = con.execute("SELECT count(*) FROM resources").fetchone()[0]
    con.close()
    return count


def timed(con: duckdb.DuckDBPyConnection, sql: str, repeat: int) -> tuple[float, int]:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TEMP TABLE out AS {sql}")
        best = min(best, time.perf_counter() - start)
    return best, con.execute("SELECT count(*) FROM out").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    resources = build(args.n)
    print(f"data: {resources:,} Observations in {DB} (ready in {time.perf_counter() - t0:.1f} s)")
    con = duckdb.connect(str(DB), read_only=True)
    con.execute(f"SET threads = {args.threads}")
    compiled = compile_view(load_view("vital_signs"))
    results = {"compiled ViewDefinition (vital_signs)": timed(con, compiled.sql, args.repeat),
               "hand-written DuckDB SQL": timed(con, HAND_WRITTEN, args.repeat)}
    rows = {r for _, r in results.values()}
    assert len(rows) == 1, f"the two queries disagree on row count: {results}"
    print("| query | rows out | best time (s) | resources/s | rows out/s |")
    print("|---|---:|---:|---:|---:|")
    for name, (secs, n_rows) in results.items():
        print(f"| {name} | {n_rows:,} | {secs:.2f} | {resources / secs:,.0f} | {n_rows / secs:,.0f} |")


if __name__ == "__main__":
    main()
