"""Memory of a bulk import as the file grows: ``fhirtwin ingest`` of replicated Synthea NDJSON files of
increasing size, with the default memory settings and with small ones (``--cache-mb`` for the map of current
versions, ``--db-memory-mb`` for DuckDB's buffer of table blocks).

Each import runs as its own ``fhirtwin ingest`` process on a fresh DuckDB file; the table gives the peak
resident memory of that process and its worker processes together (sampled from /proc every 50 ms),
and the resources/s of the same run.

    .venv/bin/python bench/bench_ingest_memory.py --sizes 100000,400000,800000,1600000 --cache-mb 64 --db-memory-mb 512
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_ingest import write_ndjson  # noqa: E402


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (0 for those that have ended)."""
    total, pending = 0, [pid]
    while pending:
        p = pending.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def run_import(path: Path, db: Path, settings: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS bytes of the process tree) of one ``fhirtwin ingest`` with these memory flags."""
    args = [str(REPO / ".venv" / "bin" / "fhirtwin"), "ingest", "--db", str(db), *settings, str(path)]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_bytes(proc.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        error = proc.stderr.read().decode().strip().splitlines() if proc.stderr else []
        raise RuntimeError(error[-1] if error else f"exit {proc.returncode}")
    return elapsed, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,200000,400000", help="resources per file, comma-separated")
    ap.add_argument("--cache-mb", type=float, default=64.0, help="the small memory for current versions")
    ap.add_argument("--db-memory-mb", type=float, default=512.0, help="the small DuckDB memory limit")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    console = Console()
    table = Table(title="fhirtwin ingest: peak memory (process + workers) as the file grows")
    for column in ("resources", "file MB", "memory settings", "peak RSS MB", "resources/s"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"bulk-{n}.ndjson"
            write_ndjson(path, n)
            small = ["--cache-mb", f"{args.cache_mb:g}", "--db-memory-mb", f"{args.db_memory_mb:g}"]
            for label, settings in (("defaults (2048 MB map, DuckDB half of RAM)", []),
                                    (f"{args.cache_mb:g} MB map, DuckDB {args.db_memory_mb:g} MB", small)):
                db = Path(tmp) / f"{n}-{len(settings)}.duckdb"
                try:
                    seconds, peak = run_import(path, db, settings)
                except RuntimeError as exc:
                    row = [f"{n:,}", f"{path.stat().st_size / 2**20:,.0f}", label, f"failed: {exc}", ""]
                else:
                    row = [f"{n:,}", f"{path.stat().st_size / 2**20:,.0f}", label, f"{peak / 2**20:,.0f}",
                           f"{n / seconds:,.0f}"]
                console.print(" | ".join(row))  # as it comes: the largest files take minutes
                table.add_row(*row)
                for leftover in Path(tmp).glob(f"{db.name}*"):
                    leftover.unlink()
            path.unlink()
    console.print(table)


if __name__ == "__main__":
    main()
