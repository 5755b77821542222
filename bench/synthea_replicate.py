"""Replicate the Synthea fixture NDJSON with fresh ids, to load a store of any size.

Every UUID in a copy (resource ids, references, identifiers) gets the same copy suffix, so
references stay consistent inside a copy and copies never collide.

    .venv/bin/python bench/synthea_replicate.py --resources 1000000 --db /tmp/bench.duckdb
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from store.store import Store  # noqa: E402

NDJSON_DIR = REPO / "fixtures" / "synthea" / "ndjson"
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def fixture_lines() -> list[bytes]:
    """All NDJSON lines of the fixture, Patients first (so references land on existing rows)."""
    files = sorted(NDJSON_DIR.glob("*.ndjson"), key=lambda p: (p.stem != "Patient", p.stem))
    return [line for path in files for line in path.read_bytes().splitlines() if line.strip()]


def replicas(resources: int) -> Iterator[dict[str, Any]]:
    """``resources`` resources: copy k rewrites every UUID ``u`` to ``u-k``."""
    lines = fixture_lines()
    emitted, copy = 0, 0
    while emitted < resources:
        suffix = b"-%d" % copy
        for line in lines:
            if emitted >= resources:
                return
            yield orjson.loads(_UUID.sub(lambda m, s=suffix: m.group(0) + s, line))
            emitted += 1
        copy += 1


def load(db: Path, resources: int, batch: int = 5000) -> float:
    """Write ``resources`` replicated resources into a store file; returns resources per second."""
    start = time.perf_counter()
    with Store(db) as store:
        chunk: list[dict[str, Any]] = []
        for res in replicas(resources):
            chunk.append(res)
            if len(chunk) == batch:
                store.write(chunk)
                chunk = []
        if chunk:
            store.write(chunk)
    return resources / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    rate = load(args.db, args.resources)
    print(f"loaded {args.resources} resources at {rate:,.0f}/s into {args.db}")


if __name__ == "__main__":
    main()
