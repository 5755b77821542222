"""Bulk NDJSON import: fhirtwin (validation + versions + search index) against its peers, same lines, same run.

    .venv/bin/python bench/bench_ingest.py --resources 200000

Peers: DuckDB's raw ``read_ndjson_objects`` (the ceiling: parse and store, no FHIR work) and
fhir.resources validating the same lines (the usual Python way to check R4 structure).
Peak memory of the import is reported to show that it streams.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import orjson
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from synthea_replicate import replicas  # noqa: E402

from ingest.pipeline import Ingestor  # noqa: E402
from store.store import Store  # noqa: E402


def write_ndjson(path: Path, n: int) -> None:
    """``n`` replicated Synthea resources as one Bulk-style NDJSON file."""
    with path.open("wb") as fh:
        for res in replicas(n):
            fh.write(orjson.dumps(res) + b"\n")


def bench_duckdb_raw(path: Path, db: Path) -> float:
    con = duckdb.connect(str(db))
    start = time.perf_counter()
    con.execute(f"CREATE TABLE raw AS SELECT * FROM read_ndjson_objects('{path}')")
    n = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    elapsed = time.perf_counter() - start
    con.close()
    return n / elapsed


def bench_fhir_resources(path: Path, sample: int) -> float:
    from fhir.resources.R4B import get_fhir_model_class

    lines = path.read_bytes().splitlines()[:sample]
    start = time.perf_counter()
    for line in lines:
        rtype = orjson.loads(line)["resourceType"]
        get_fhir_model_class(rtype).model_validate_json(line)
    return len(lines) / (time.perf_counter() - start)


def bench_fhirtwin(path: Path, db: Path, *, validate: bool) -> tuple[float, int]:
    store = Store(db)
    ingestor = Ingestor(store) if validate else Ingestor(store, validator=None)
    start = time.perf_counter()
    summary = ingestor.ingest_paths([path])
    elapsed = time.perf_counter() - start
    store.close()
    assert summary.rejected == 0, summary.errors[:3]
    return summary.accepted / elapsed, summary.accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=200_000)
    parser.add_argument("--fhir-resources-sample", type=int, default=5_000)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "bulk.ndjson"
        write_ndjson(data, args.resources)
        size_mb = data.stat().st_size / 1e6
        rows = [
            ("DuckDB read_ndjson_objects (raw, no FHIR work)", bench_duckdb_raw(data, work / "raw.duckdb"), args.resources),
            ("fhir.resources R4B validation only", bench_fhir_resources(data, args.fhir_resources_sample),
             args.fhir_resources_sample),
        ]
        rate, n = bench_fhirtwin(data, work / "noval.duckdb", validate=False)
        rows.append(("fhirtwin ingest, no validation (versions + index)", rate, n))
        rate, n = bench_fhirtwin(data, work / "full.duckdb", validate=True)
        rows.append(("fhirtwin ingest (validation + versions + index)", rate, n))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = Table(title=f"bulk NDJSON import, {args.resources:,} resources ({size_mb:.0f} MB)")
    table.add_column("what")
    table.add_column("resources/s", justify="right")
    table.add_column("resources", justify="right")
    for name, rate, n in rows:
        table.add_row(name, f"{rate:,.0f}", f"{n:,}")
    console.print(table)
    console.print(f"peak RSS of the benchmark process: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
