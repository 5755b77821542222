"""What one stop-and-wait round of 8 MLLP senders costs at least: the durable inbox commit.

Under the ``commit`` ACK policy, 8 stop-and-wait senders get their AAs once per round, after one
inbox transaction holding their 8 messages. This prints, for a group of 8 messages on this disk:

- an append of their bytes to a file and ``fsync`` (the disk's floor);
- DuckDB ``INSERT`` (of Arrow rows) + ``COMMIT`` into a fresh table of 1, 6 and 22 VARCHAR
  columns (the statement floor; the inbox row has 22 columns);
- ``Inbox.accept`` of 8 ADT^A01 messages (parse, duplicate check, ACKs, insert, commit).

    .venv/bin/python bench/bench_inbox_commit.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ingest.hl7v2.inbox import Arrival, Inbox  # noqa: E402
from store.store import Store  # noqa: E402

TEMPLATE = (REPO / "fixtures" / "mllp" / "adt_a01_template.hl7").read_text()
GROUP = 8


def adt(control_id: str, mrn: str) -> bytes:
    text = TEMPLATE.format(app="LAB", facility="HOSP", control_id=control_id, ack_fields="", mrn=mrn,
                           family="Doe", given="Jane", visit=f"V{mrn}")
    return text.replace("\n", "\r").encode()


def timed(rounds: int, one_round: Callable[[int], None]) -> tuple[float, float]:
    """p50 and p90 milliseconds of ``one_round(k)`` over ``rounds`` rounds."""
    ms = []
    for k in range(rounds):
        t0 = time.perf_counter()
        one_round(k)
        ms.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(ms, n=10)
    return statistics.median(ms), q[8]


def fsync_round(folder: Path) -> Callable[[int], None]:
    fd = os.open(folder / "journal.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    payload = b"".join(adt(f"F{i}", str(i)) for i in range(GROUP))

    def one(_k: int) -> None:
        os.write(fd, payload)
        os.fsync(fd)
    return one


def duckdb_round(folder: Path, columns: int) -> Callable[[int], None]:
    con = duckdb.connect(str(folder / f"t{columns}.duckdb"))
    con.execute(f"CREATE TABLE t ({', '.join(f'c{i} VARCHAR' for i in range(columns))})")
    text = adt("D", "1").decode()

    def one(k: int) -> None:
        rows = pa.table({f"c{i}": [f"{k}-{j}-{text[:40]}" for j in range(GROUP)] for i in range(columns)})  # noqa: F841 - read by name below (as the inbox does)
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO t SELECT * FROM rows")
        con.execute("COMMIT")
    return one


def inbox_round(folder: Path) -> tuple[Callable[[int], None], Store]:
    store = Store(folder / "inbox.duckdb")
    inbox = Inbox(store, ack_after="commit")

    def one(k: int) -> None:
        inbox.accept([Arrival(adt(f"C{k}-{i}", f"{k}{i}"), "bench") for i in range(GROUP)])
    return one, store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [("append + fsync of the 8 messages", *timed(args.rounds, fsync_round(folder)))]
        for columns in (1, 6, 22):
            rows.append((f"DuckDB INSERT + COMMIT, {columns} column(s)",
                         *timed(args.rounds, duckdb_round(folder, columns))))
        one, store = inbox_round(folder)
        with store:
            rows.append(("Inbox.accept (commit policy)", *timed(args.rounds, one)))
    print(f"\none round of {GROUP} messages ({args.rounds} rounds), milliseconds\n")
    print("| step | p50 ms | p90 ms |\n|---|---:|---:|")
    for name, p50, p90 in rows:
        print(f"| {name} | {p50:.2f} | {p90:.2f} |")


if __name__ == "__main__":
    main()
