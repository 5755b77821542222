"""Bulk NDJSON import: fhirtwin (validation + versions + search index) against its peers, same lines, same run.

    .venv/bin/python bench/bench_ingest.py --resources 100000

fhirtwin is measured on its bulk path (``ingest.bulk``: chunks of lines parsed, validated and
prepared, then committed in large transactions) in process and with worker processes preparing
the chunks while the writer commits, with and without validation; the CPU is split between this
process (the writer) and the workers (which include their start: imports, tables, generated code).
A per-stage breakdown (µs per resource, one core, stages not overlapping) follows the table.

Peers: DuckDB's raw ``read_ndjson_objects`` (the ceiling: parse and store, no FHIR work) and
fhir.resources validating the same lines (the usual Python way to check R4 structure).
Peak memory of the import is reported to show that it streams.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import sys
import tempfile
import time
from collections.abc import Callable
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
from ingest.r4_check import r4_validator  # noqa: E402
from store import store as store_module  # noqa: E402
from store.gc_pause import paused_gc  # noqa: E402
from store.prepare import identify, prepare  # noqa: E402
from store.search_index import index_tables  # noqa: E402
from store.store import Store  # noqa: E402


def write_ndjson(path: Path, n: int) -> None:
    """``n`` replicated Synthea resources as one Bulk-style NDJSON file."""
    with path.open("wb") as fh:
        for res in replicas(n):
            fh.write(orjson.dumps(res) + b"\n")


def _cpu_seconds() -> tuple[float, float]:
    """CPU time of this process (all its threads) and of its finished worker processes."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, workers.ru_utime + workers.ru_stime


def timed(run: Callable[[], int]) -> tuple[float, int, float, float, float]:
    """(resources/s, resources, CPU µs per resource, of which in this process, of which in worker
    processes) of ``run``, which returns how many it handled.

    The CPU figure is what the machine's load does not inflate much: compare it across runs."""
    (own, workers), start = _cpu_seconds(), time.perf_counter()
    n = run()
    elapsed = time.perf_counter() - start
    own_after, workers_after = _cpu_seconds()
    own_us, workers_us = (own_after - own) / n * 1e6, (workers_after - workers) / n * 1e6
    return n / elapsed, n, own_us + workers_us, own_us, workers_us


def bench_duckdb_raw(path: Path, db: Path) -> int:
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE raw AS SELECT * FROM read_ndjson_objects('{path}')")
    n = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    con.close()
    return n


def bench_fhir_resources(lines: list[bytes]) -> int:
    from fhir.resources.R4B import get_fhir_model_class

    for line in lines:
        rtype = orjson.loads(line)["resourceType"]
        get_fhir_model_class(rtype).model_validate_json(line)
    return len(lines)


def bench_fhirtwin(path: Path, db: Path, *, validate: bool, workers: int) -> int:
    store = Store(db)
    validator = r4_validator if validate else None
    ingestor = Ingestor(store, validator, workers=workers, bulk_min_bytes=0)
    summary = ingestor.ingest_paths([path])
    store.close()
    assert summary.rejected == 0, summary.errors[:3]
    return summary.accepted


def stage_profile(path: Path, sample: int, db: Path) -> list[tuple[str, float]]:
    """µs per resource of each stage, in this process, on the first ``sample`` lines."""
    with path.open("rb") as fh:
        lines = [line for _, line in zip(range(sample), fh, strict=False)]
    n = len(lines)
    clock = time.process_time  # CPU of every thread of this process (DuckDB's included)
    with paused_gc():  # as in the import's workers (ingest.bulk.prepare_chunk)
        # Warm up as a worker is after its first chunk: validator tables and the generated indexers of
        # the sample's types and shapes are built once per process, not per resource.
        warm = [orjson.loads(line) for line in lines]
        for res in warm:
            r4_validator(res)
        prepare(warm)
        del warm
        t0 = clock()
        resources = [orjson.loads(line) for line in lines]
        t1 = clock()
        for res in resources:
            r4_validator(res)
        t2 = clock()
        for res in resources:
            identify(res)
        t3 = clock()
        batches = [prepare(resources[i : i + 5000])[0] for i in range(0, n, 5000)]
        t4 = clock()
        index_tables(resources, [None] * n)  # on the prepared resources, as prepare() indexes them
        t5 = clock()
        sent = [pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL) for batch in batches]
        t6 = clock()
        del resources, sent  # freed before the collector resumes, as a worker's chunk is
    store = Store(db)
    t7 = clock()
    # Staging and storing timed apart: the group inserts nothing before its commit.
    flush, store_module.FLUSH_RESOURCES = store_module.FLUSH_RESOURCES, n + 1
    try:
        group = store.write_group()
        for batch in batches:
            group.add(batch)
        t8 = clock()
        group.commit()
    finally:
        store_module.FLUSH_RESOURCES = flush
    t9 = clock()
    store.close()
    t10 = clock()
    us = 1e6 / n
    return [
        ("parse JSON (orjson)", (t1 - t0) * us),
        ("R4 validation", (t2 - t1) * us),
        ("id + content hash", (t3 - t2) * us),
        ("prepare: patient, meta marks, body (without id, hash, index)", ((t4 - t3) - (t5 - t4) - (t3 - t2)) * us),
        ("search-index rows (extract, split, Arrow)", (t5 - t4) * us),
        ("prepared batch pickled (worker to writer)", (t6 - t5) * us),
        ("open the store (fresh file)", (t7 - t6) * us),
        ("writer, staging: versions, splice, map entries", (t8 - t7) * us),
        ("writer, storing: Arrow tables, DuckDB inserts + commit (one transaction)", (t9 - t8) * us),
        ("close (checkpoint)", (t10 - t9) * us),
    ]


FLOOR = ("parse JSON (orjson)", "R4 validation", "writer, storing: Arrow tables, DuckDB inserts + commit (one transaction)")
"""Stages every R4-validating import into this store pays, however the rest is organised: reading the
lines into Python objects to validate them, and DuckDB storing the versions, current rows and index
rows. Their sum bounds the rate on the machine's cores even if ids, hashes, bodies, index rows and
versions cost nothing."""


def floor_table(stages: list[tuple[str, float]], cores: int, goal: int) -> Table:
    """The floor stages, their sum, and the best rate it allows on ``cores`` against the ``goal``."""
    us = dict(stages)
    floor = sum(us[name] for name in FLOOR)
    table = Table(title=f"the floor: what any R4-validating import into this store pays (µs/resource, {cores} cores)")
    table.add_column("stage")
    table.add_column("CPU µs/resource", justify="right")
    for name in FLOOR:
        table.add_row(name, f"{us[name]:,.1f}")
    table.add_row("sum", f"{floor:,.1f}")
    table.add_row(f"best rate on {cores} cores, all else free", f"{cores * 1e6 / floor:,.0f}/s")
    table.add_row(f"CPU per resource the goal allows ({goal:,}/s on {cores} cores)", f"{cores * 1e6 / goal:,.1f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--fhir-resources-sample", type=int, default=5_000)
    parser.add_argument("--profile-sample", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stages-only", action="store_true", help="only the per-stage breakdown")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "bulk.ndjson"
        write_ndjson(data, args.resources)
        size_mb = data.stat().st_size / 1e6
        load_before = os.getloadavg()[0]
        sample = data.read_bytes().splitlines()[: args.fhir_resources_sample]
        rows = [] if args.stages_only else [
            ("DuckDB read_ndjson_objects (raw, no FHIR work)", *timed(lambda: bench_duckdb_raw(data, work / "raw.duckdb"))),
            ("fhir.resources R4B validation only", *timed(lambda: bench_fhir_resources(sample))),
        ]
        for label, validate, workers in () if args.stages_only else (
            ("in process, no validation", False, 0),
            ("in process (validation + versions + index)", True, 0),
            (f"parallel bulk, {args.workers} workers, no validation", False, args.workers),
            (f"parallel bulk, {args.workers} workers (validation + versions + index)", True, args.workers),
        ):
            db = work / f"ft{len(rows)}.duckdb"
            rows.append((f"fhirtwin ingest, {label}",
                         *timed(lambda db=db, v=validate, w=workers: bench_fhirtwin(data, db, validate=v, workers=w))))
        stages = stage_profile(data, args.profile_sample, work / "stages.duckdb")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = Table(title=f"bulk NDJSON import, {args.resources:,} resources ({size_mb:.0f} MB)")
    table.add_column("what")
    table.add_column("resources/s", justify="right")
    table.add_column("resources", justify="right")
    table.add_column("CPU µs/resource", justify="right")
    table.add_column("of which this process", justify="right")
    table.add_column("of which workers", justify="right")
    for name, rate, n, cpu_us, own_us, workers_us in rows:
        table.add_row(name, f"{rate:,.0f}", f"{n:,}", f"{cpu_us:,.0f}", f"{own_us:,.0f}", f"{workers_us:,.0f}")
    console.print(table)
    console.print(f"load average (1 min) before: {load_before:.1f}, after: {os.getloadavg()[0]:.1f}")
    breakdown = Table(title=f"where the time goes (CPU, in process, first {args.profile_sample:,} resources)")
    breakdown.add_column("stage")
    breakdown.add_column("CPU µs/resource", justify="right")
    for name, us in stages:
        breakdown.add_row(name, f"{us:,.1f}")
    breakdown.add_row("total", f"{sum(us for _, us in stages):,.1f}")
    console.print(breakdown)
    console.print(floor_table(stages, cores=2, goal=50_000))
    console.print(f"peak RSS of the benchmark process: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
