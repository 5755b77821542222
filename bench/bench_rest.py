"""Benchmark: the FHIR REST API on loopback — read by id and typical searches, req/s and p50/p99.

The server runs in its own process (uvicorn, one worker: the single DuckDB owner) over a
store loaded by ``bench/synthea_replicate.py``; the load comes from this process with an
asyncio + httpx client holding N concurrent connections. Both share the machine's cores,
so figures are a floor for the server alone. Peer: a fixed-body FastAPI route measured the
same way in the same run (the ceiling of the web stack on this machine).

    .venv/bin/python bench/bench_rest.py --db /tmp/bench.duckdb --resources 30000 --seconds 8 --connections 32
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.synthea_replicate import load  # noqa: E402

SERVER = """
import sys, uvicorn
sys.path.insert(0, {repo!r})
from fhir_server.app import create_app
from store.store import Store
app = create_app(Store({db!r}))
@app.get("/fixed")
async def fixed():
    from fastapi.responses import Response
    return Response(content=b'{{"resourceType":"Patient","id":"x"}}', media_type="application/fhir+json")
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", access_log=False)
"""


async def drive(urls: list[str], seconds: float, connections: int) -> tuple[int, list[float], int]:
    """Hit ``urls`` round-robin from ``connections`` workers for ``seconds``: (count, latencies ms, errors)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.get(urls[i % len(urls)])
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += r.status_code != 200
                i += connections

        await asyncio.gather(*(worker(k) for k in range(connections)))
    return len(latencies), latencies, errors


@contextmanager
def running_server(db: Path, port: int) -> Iterator[tuple[subprocess.Popen, str]]:
    """The API over ``db`` in its own process, once it answers (opening a large store takes a while);
    stopped on exit."""
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(repo=str(REPO), db=str(db), port=port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/fhir/metadata", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        yield server, base
    finally:
        server.terminate()
        server.wait(timeout=60)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--resources", type=int, default=30000, help="load this many if the db is new")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if not args.db.exists():
        rate = load(args.db, args.resources)
        print(f"loaded {args.resources} resources at {rate:,.0f}/s")
    con = duckdb.connect(str(args.db), read_only=True)
    patients = [r[0] for r in con.execute("SELECT id FROM resources WHERE resource_type='Patient'").fetchall()]
    observations = [r[0] for r in con.execute(
        "SELECT id FROM resources WHERE resource_type='Observation' USING SAMPLE 2000 ROWS").fetchall()]
    total = con.execute("SELECT count(*) FROM resources").fetchone()[0]
    con.close()
    with running_server(args.db, args.port) as (server, base):
        rng = random.Random(7)
        sample = rng.sample(patients, min(200, len(patients)))
        cases = {
            "peer: fixed-body FastAPI route": [f"{base}/fixed"],
            "read Observation by id": [f"{base}/fhir/Observation/{i}" for i in observations],
            "read Patient by id": [f"{base}/fhir/Patient/{i}" for i in sample],
            "Observation?patient&code&date range&_sort=-date&_count=50": [
                f"{base}/fhir/Observation?patient={p}&code=http://loinc.org|8302-2&date=ge2000-01-01"
                f"&date=lt2030-01-01&_sort=-date&_count=50" for p in sample],
            "Observation?subject:Patient.name=…&_count=50 (chained)": [
                f"{base}/fhir/Observation?subject:Patient.name=a&_count=50"],
            "Observation?patient=…&_include=Observation:subject": [
                f"{base}/fhir/Observation?patient={p}&_include=Observation:subject&_count=50" for p in sample],
        }
        print(f"store: {total} resources; {args.connections} connections, {args.seconds:.0f} s per case")
        print(f"{'case':60} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for name, urls in cases.items():
            asyncio.run(drive(urls, 1, args.connections))
            n, lat, errors = asyncio.run(drive(urls, args.seconds, args.connections))
            print(f"{name:60} {n / args.seconds:8.0f} {pct(lat, 0.5):8.1f} {pct(lat, 0.99):8.1f} {errors:7d}")


if __name__ == "__main__":
    main()
