"""MLLP end to end with durable ACK: 8 concurrent senders on loopback against a listener process.

fhirtwin, under both original-mode ACK policies, each in its own process on a fresh
DuckDB file (the listener as ``fhirtwin mllp`` runs it: mapping in one worker process
under ``commit``, in a thread under ``processed``):

- ``processed``: AA once the message is committed in the inbox *and* mapped into the store;
- ``commit``: AA once it is committed in the inbox; mapping follows in the background.
  For this policy the table also says when the background mapping had caught up
  (``mapped/s`` = messages / time from the first send until the last one was mapped).

Peer, same run: python-hl7's asyncio MLLP server (``hl7.mllp.start_hl7_server``)
answering AA at once, storing nothing (the cost of MLLP + ER7 parsing alone).

Senders: ``window`` = messages awaiting their ACK per connection (1 = the classic
stop-and-wait interface engine; 32 = a pipelining sender).

    .venv/bin/python bench/bench_mllp.py --messages 1500 --senders 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ingest.hl7v2.mllp import MLLPDecoder, encode_frame, exchange  # noqa: E402

TEMPLATE = (REPO / "fixtures" / "mllp" / "adt_a01_template.hl7").read_text()
PEER = (
    "import asyncio, hl7\nfrom hl7.mllp import start_hl7_server\n"
    "async def handle(reader, writer):\n"
    "    try:\n"
    "        while not writer.is_closing():\n"
    "            msg = await reader.readmessage()\n"
    "            writer.writemessage(msg.create_ack())\n"
    "            await writer.drain()\n"
    "    except (asyncio.IncompleteReadError, ConnectionError):\n"
    "        writer.close()\n"
    "async def main():\n"
    "    server = await start_hl7_server(handle, host='127.0.0.1', port=0)\n"
    "    print('MLLP listening on 127.0.0.1:%d' % server.sockets[0].getsockname()[1], flush=True)\n"
    "    await server.serve_forever()\n"
    "asyncio.run(main())\n"
)


def adt(sender: int, i: int, run: str) -> bytes:
    mrn = f"{run}{sender}{i % 400:04d}"
    text = TEMPLATE.format(
        app=f"ADT{sender}", facility="HOSP", control_id=f"{run}-{sender}-{i}", ack_fields="", mrn=mrn,
        family=f"Family{i}", given="Pat", visit=f"V{run}{sender}{i}",
    )
    return text.replace("\n", "\r").encode()


async def sender(port: int, payloads: list[bytes], window: int, latencies_s: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = MLLPDecoder()
    sent_at: list[float] = []
    acked = ok = 0
    while acked < len(payloads):
        while len(sent_at) < len(payloads) and len(sent_at) - acked < window:
            sent_at.append(time.perf_counter())
            writer.write(encode_frame(payloads[len(sent_at) - 1]))
        await writer.drain()
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        for frame in decoder.feed(data):
            latencies_s.append(time.perf_counter() - sent_at[acked])
            ok += b"MSA|AA|" in frame.payload
            acked += 1
    writer.close()
    return ok


async def load(port: int, senders: int, messages: int, window: int, run: str) -> tuple[float, float, list[float], int]:
    """Returns (wall-clock start, elapsed s until the last ACK, sorted ACK latencies, AA count)."""
    latencies_s: list[float] = []
    payloads = [[adt(s, i, run) for i in range(messages)] for s in range(senders)]
    wall, start = time.time(), time.perf_counter()
    oks = await asyncio.gather(*(sender(port, p, window, latencies_s) for p in payloads))
    return wall, time.perf_counter() - start, sorted(latencies_s), sum(oks)


# -- the fhirtwin side: a listener process that also answers "when is N mapped?" on stdin -----------
async def serve_fhirtwin(db: str, ack_after: str, map_workers: str) -> None:
    from ingest.hl7v2.listener import start_mllp_server
    from store.store import Store

    with Store(db) as store:
        workers = None if map_workers == "default" else int(map_workers)
        server = await start_mllp_server(store, "127.0.0.1", 0, ack_after=ack_after, map_workers=workers)
        print(f"MLLP listening on 127.0.0.1:{server.port}", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            target = int(line)
            while sum(n for k, n in server.stats.items() if k.startswith("status_")) < target:
                await asyncio.sleep(0.005)
            print(f"{time.time()} {dict(server.stats)}", flush=True)
        await server.shutdown()


def start(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("MLLP listening on"):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def mapped_at(proc: subprocess.Popen[str], total: int) -> float:
    """Wall-clock time at which the listener had processed ``total`` messages since it started."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{total}\n")
    proc.stdin.flush()
    return float(proc.stdout.readline().split(" ", 1)[0])


def stop(proc: subprocess.Popen[str], graceful: bool) -> None:
    """fhirtwin shuts down when its stdin closes (draining, stopping its mapping process); the peer on SIGTERM."""
    if proc.stdin is not None:
        proc.stdin.close()
    if not graceful:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Row:
    server: str
    window: int
    messages: int
    aa: int
    msg_s: float
    p50_ms: float
    p99_ms: float
    mapped_s: float | None


def first_ack_ms(port: int) -> float:
    """Milliseconds from sending one message to a just-started server until its ACK."""
    t0 = time.perf_counter()
    asyncio.run(exchange("127.0.0.1", port, [adt(99, 0, "first")]))
    return (time.perf_counter() - t0) * 1e3


def measure(name: str, cmd: list[str], windows: list[int], senders: int, messages: int, fhirtwin: bool
            ) -> tuple[list[Row], float]:
    """The rows of one server, and its first ACK after it started listening (ms)."""
    rows = []
    proc, port = start(cmd)
    try:
        first_ms = first_ack_ms(port)
        done = 1
        for window in windows:
            wall, elapsed_s, lat, ok = asyncio.run(load(port, senders, messages, window, f"w{window}"))
            total = senders * messages
            mapped = None
            if fhirtwin:
                done += total
                mapped = total / (mapped_at(proc, done) - wall)
            rows.append(Row(name, window, total, ok, total / elapsed_s, lat[len(lat) // 2] * 1e3,
                            lat[int(len(lat) * 0.99)] * 1e3, mapped))
    finally:
        stop(proc, graceful=fhirtwin)
    return rows, first_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1500, help="messages per sender per run")
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--windows", default="1,32", help="comma-separated in-flight windows per connection")
    ap.add_argument("--policies", default="processed,commit", help="fhirtwin ACK policies to measure")
    ap.add_argument(
        "--map-workers", default="default", help="fhirtwin mapping processes (default: the listener's, per policy)"
    )
    ap.add_argument("--serve", nargs=3, metavar=("DB", "ACK_AFTER", "MAP_WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve_fhirtwin(*args.serve))
        return
    windows = [int(w) for w in args.windows.split(",")]
    load_before = os.getloadavg()
    rows: list[Row] = []
    firsts: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = [(f"fhirtwin, AA after {policy}",
                    [str(Path(__file__).resolve()), "--serve", str(Path(tmp) / f"{policy}.duckdb"), policy,
                     str(args.map_workers)], True) for policy in args.policies.split(",")]
        servers.append(("python-hl7 server (ACK only)", ["-c", PEER], False))
        for name, cmd, fhirtwin in servers:
            server_rows, firsts[name] = measure(name, cmd, windows, args.senders, args.messages, fhirtwin)
            rows += server_rows
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {os.cpu_count()} cores")
    print(f"{'server':30} {'window':>6} {'messages':>8} {'AA':>6} {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'mapped/s':>8}")
    for r in rows:
        mapped = "" if r.mapped_s is None else f"{r.mapped_s:.0f}"
        print(f"{r.server:30} {r.window:>6} {r.messages:>8} {r.aa:>6} {r.msg_s:>7.0f} {r.p50_ms:>7.1f} "
              f"{r.p99_ms:>7.1f} {mapped:>8}")
    print("first ACK after the server started listening: "
          + ", ".join(f"{name} {ms:.0f} ms" for name, ms in firsts.items()))


if __name__ == "__main__":
    main()
