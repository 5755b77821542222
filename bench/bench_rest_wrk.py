"""Benchmark: the FHIR REST API under wrk — reads and the typical searches on a loaded store.

Starts the API (one uvicorn process, the single DuckDB owner) over a store built by
``bench/synthea_replicate.py``, writes one file of request paths per case from the store itself
(random Observations, random patients with Observations, random family names), and runs
``wrk -t1 -c8 --latency`` with ``bench/wrk_paths.lua`` for each case. Searches are measured warm:
one sequential pass over a case's paths first, whose latencies are reported as "first touch"
(the patient cache loads a patient's index rows on its first search). The web-stack peer is a
fixed-body route on the same app.

    .venv/bin/python bench/bench_rest_wrk.py --db /tmp/b1m.duckdb --seconds 10
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import duckdb
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_rest import pct, running_server  # noqa: E402

LUA = REPO / "bench" / "wrk_paths.lua"


def case_paths(db: Path, n: int = 300) -> tuple[int, str, dict[str, list[str]]]:
    """(resources, code, {case: paths}) sampled from the store."""
    con = duckdb.connect(str(db), read_only=True)
    total = con.execute("SELECT count(*) FROM resources").fetchone()[0]
    code = con.execute(
        "SELECT code FROM idx_token WHERE rt = 'Observation' AND param = 'code' AND system = 'http://loinc.org' "
        "GROUP BY code ORDER BY count(DISTINCT pid) DESC, code LIMIT 1").fetchone()[0]
    patients = [r[0] for r in con.execute(
        "SELECT DISTINCT pid FROM idx_token WHERE rt = 'Observation' AND param = 'code' AND code = ? "
        "ORDER BY hash(pid) LIMIT ?", [code, n]).fetchall()]
    families = [r[0] for r in con.execute(
        "SELECT raw FROM idx_string WHERE rt = 'Patient' AND param = 'family' ORDER BY hash(id) LIMIT ?",
        [n]).fetchall()]
    observations = [r[0] for r in con.execute(
        "SELECT id FROM resources WHERE resource_type = 'Observation' ORDER BY hash(id) LIMIT 2000").fetchall()]
    con.close()
    cases = {
        "peer: fixed-body route": ["/fixed"],
        "read Observation by id": [f"/fhir/Observation/{i}" for i in observations],
        "Observation?patient&code&date&_sort=-date&_count=50": [
            f"/fhir/Observation?patient={p}&code=http://loinc.org|{code}&date=ge2000-01-01&date=lt2030-01-01"
            f"&_sort=-date&_count=50" for p in patients],
        "Observation?patient&code&_include=Observation:subject": [
            f"/fhir/Observation?patient={p}&code={code}&_include=Observation:subject&_count=50" for p in patients],
        "Observation?subject:Patient.name&code&_count=50 (chained)": [
            f"/fhir/Observation?subject:Patient.name={quote(f)}&code={code}&_count=50" for f in families],
    }
    return total, code, cases


def wrk(base: str, paths_file: Path, seconds: float, connections: int) -> tuple[float, float, float, int]:
    """(req/s, p50 ms, p99 ms, non-2xx) from one wrk run."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", str(LUA), base],
        env={"WRK_PATHS": str(paths_file), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True,
    ).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, ms("50%"), ms("99%"), int(bad.group(1)) if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    total, code, cases = case_paths(args.db)
    with running_server(args.db, args.port) as (server, base):
        print(f"store: {total:,} resources; code {code}; wrk -t1 -c{args.connections}, {args.seconds:.0f} s per case")
        print("| case | req/s | p50 ms | p99 ms | non-2xx | first touch p50 / p99 ms |")
        print("|---|---:|---:|---:|---:|---|")
        with tempfile.TemporaryDirectory() as tmp, httpx.Client(base_url=base, timeout=60) as client:
            for name, paths in cases.items():
                first = []
                for path in paths:
                    t0 = time.perf_counter()
                    client.get(path)
                    first.append((time.perf_counter() - t0) * 1000)
                paths_file = Path(tmp) / "paths.txt"
                paths_file.write_text("\n".join(paths) + "\n")
                rate, p50, p99, bad = wrk(base, paths_file, args.seconds, args.connections)
                touch = f"{pct(first, 0.5):.1f} / {pct(first, 0.99):.1f}" if name.startswith("Observation?") else ""
                print(f"| {name} | {rate:,.0f} | {p50:.1f} | {p99:.1f} | {bad} | {touch} |", flush=True)
        rss = next(line for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS"))
        print(f"server memory after the run: {rss.split(':', 1)[1].strip()}")


if __name__ == "__main__":
    main()
