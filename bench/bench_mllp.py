"""MLLP end to end with durable ACK: 8 concurrent senders on loopback against a listener process.

fhirtwin: ``run_mllp_forever`` in its own process on a fresh DuckDB file; every AA
means the message is committed in the inbox and mapped into the store.
Peer, same run: python-hl7's asyncio MLLP server (``hl7.mllp.start_hl7_server``)
answering AA at once, storing nothing (the cost of MLLP + ER7 parsing alone).

Senders: ``window`` = messages awaiting their ACK per connection (1 = the classic
stop-and-wait interface engine; 32 = a pipelining sender).

    .venv/bin/python bench/bench_mllp.py --messages 1500 --senders 8
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ingest.hl7v2.mllp import MLLPDecoder, encode_frame  # noqa: E402

TEMPLATE = (REPO / "fixtures" / "mllp" / "adt_a01_template.hl7").read_text()
FHIRTWIN = (
    "import sys\nfrom ingest.hl7v2.listener import run_mllp_forever\nfrom store.store import Store\n"
    "with Store(sys.argv[1]) as store:\n    run_mllp_forever(store, '127.0.0.1', 0)\n"
)
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


async def load(port: int, senders: int, messages: int, window: int, run: str) -> tuple[float, list[float], int]:
    latencies_s: list[float] = []
    payloads = [[adt(s, i, run) for i in range(messages)] for s in range(senders)]
    start = time.perf_counter()
    oks = await asyncio.gather(*(sender(port, p, window, latencies_s) for p in payloads))
    return time.perf_counter() - start, sorted(latencies_s), sum(oks)


def start(code: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("MLLP listening on"):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1500, help="messages per sender per run")
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--windows", default="1,32", help="comma-separated in-flight windows per connection")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, code, extra in (
            ("fhirtwin (durable inbox + mapped)", FHIRTWIN, [str(Path(tmp) / "bench.duckdb")]),
            ("python-hl7 server (ACK only)", PEER, []),
        ):
            proc, port = start(code, *extra)
            try:
                for window in (int(w) for w in args.windows.split(",")):
                    elapsed_s, lat, ok = asyncio.run(load(port, args.senders, args.messages, window, f"w{window}"))
                    total = args.senders * args.messages
                    rows.append((name, window, total, ok, total / elapsed_s,
                                 lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3))
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"{'server':36} {'window':>6} {'messages':>8} {'AA':>6} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, window, total, ok, rate, p50, p99 in rows:
        print(f"{name:36} {window:>6} {total:>8} {ok:>6} {rate:>8.0f} {p50:>8.1f} {p99:>8.1f}")


if __name__ == "__main__":
    main()
