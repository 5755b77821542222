"""The listener as its own process: python-hl7's ``mllp_send`` as the external sender, and SIGKILL mid-stream.

The server runs ``run_mllp_forever`` in a subprocess on port 0 and prints the port
it bound; that is how these tests get a free port without racing for one.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ingest.hl7v2.inbox import Inbox
from ingest.hl7v2.mllp import encode_frame
from store.store import Store

REPO = Path(__file__).resolve().parents[2]
FEED = REPO / "fixtures" / "mllp" / "feed.hl7"
TEMPLATE = (REPO / "fixtures" / "mllp" / "adt_a01_template.hl7").read_text()
MLLP_SEND = Path(sys.executable).with_name("mllp_send")
SERVER = (
    "import sys\n"
    "from ingest.hl7v2.listener import run_mllp_forever\n"
    "from store.store import Store\n"
    "with Store(sys.argv[1]) as store:\n"
    "    run_mllp_forever(store, '127.0.0.1', 0, ack_after=sys.argv[2])\n"
)


def start_server(db: Path, ack_after: str = "processed") -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(db), ack_after], cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("MLLP listening on"), line
    return proc, int(line.rsplit(":", 1)[1])


def children(pid: int) -> list[int]:
    """Live child processes (Linux /proc): the listener's mapping process."""
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in found if alive(int(c))]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def msa(ack: bytes) -> list[str]:
    line = next(s for s in ack.split(b"\r") if s.startswith(b"MSA"))
    return line.decode().split("|")


def test_mllp_send_feed_acks_and_store(tmp_path: Path) -> None:
    db = tmp_path / "feed.duckdb"
    proc, port = start_server(db)
    try:
        out = subprocess.run(
            [str(MLLP_SEND), "--loose", "-f", str(FEED), "-p", str(port), "127.0.0.1"],
            capture_output=True, timeout=60, check=True,
        ).stdout
    finally:
        stop_server(proc)
    acks = [a.strip(b"\x0b\r\n") for a in out.split(b"\x1c") if a.strip(b"\x0b\r\n")]
    codes = [msa(a)[1:3] for a in acks]
    assert codes == [
        ["AA", "CNTRL-3456"],
        ["AA", "Q150084616T145947960"],
        ["AA", "182"],
        ["CA", "4637382"],
        ["AR", ""],
        ["AA", "0123456789"],
        ["AA", "CNTRL-3456"],
        ["AE", "Q150084616T145947960"],
    ]
    assert acks[6] == acks[0]  # the resend is answered with the very same ACK
    assert b"|101^" in acks[4] and b"not mapped" in acks[5]
    assert b"ERR|MSH^1^10^205&" in acks[7]  # v2.3 sender: ERR-1 in the pre-2.5 ELD layout
    with Store(db) as store:
        assert Inbox(store).counts() == {"conflict": 1, "not-mapped": 1, "processed": 4, "rejected": 1}
        glucose = store.cursor().execute(
            "SELECT count(*) FROM resources WHERE resource_type = 'Observation' AND json::VARCHAR LIKE '%GLUCOSE%'"
        ).fetchone()[0]
        assert glucose >= 1
        ids = store.cursor().execute(
            "SELECT resource_ids FROM hl7_inbox WHERE control_id = '4637382'"
        ).fetchone()[0]
        assert "Patient/" in ids and "Encounter/" in ids


def adt(i: int) -> bytes:
    text = TEMPLATE.format(
        app="ADMIT", facility="HOSP", control_id=f"K{i:05d}", ack_fields="", mrn=f"MRN{i:05d}",
        family=f"Family{i}", given="Pat", visit=f"V{i:05d}",
    )
    return text.replace("\n", "\r").encode()


async def send_until_killed(port: int, payloads: list[bytes], proc: subprocess.Popen[str], kill_after: int) -> list[int]:
    """Pipeline messages; SIGKILL the server once ``kill_after`` ACKs are in; return indexes that got AA."""
    from ingest.hl7v2.mllp import MLLPDecoder

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = MLLPDecoder()
    acked: list[int] = []
    sent = 0
    try:
        while len(acked) < len(payloads):
            while sent < len(payloads) and sent - len(acked) < 16:
                writer.write(encode_frame(payloads[sent]))
                sent += 1
            await writer.drain()
            data = await reader.read(65536)
            if not data:
                break
            for frame in decoder.feed(data):
                code, control_id = msa(frame.payload)[1:3]
                assert code == "AA"
                acked.append(int(control_id[1:]))
            if len(acked) >= kill_after and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
    except ConnectionError:
        pass
    finally:
        writer.close()
    return acked


@pytest.mark.parametrize("ack_after", ["processed", "commit"])
def test_sigkill_mid_stream_loses_nothing_acked_and_resends_make_no_duplicates(tmp_path: Path, ack_after: str) -> None:
    db = tmp_path / "kill.duckdb"
    payloads = [adt(i) for i in range(240)]
    proc, port = start_server(db, ack_after)
    try:
        workers = children(proc.pid)
        acked = asyncio.run(asyncio.wait_for(send_until_killed(port, payloads, proc, kill_after=60), 120))
    finally:
        if proc.poll() is None:  # the test failed before the kill: do not leave the listener running
            proc.kill()
        proc.wait(timeout=30)
    assert bool(workers) == (ack_after == "commit")  # under commit, mapping runs in its own process
    assert proc.returncode == -signal.SIGKILL
    assert 60 <= len(acked) < len(payloads)
    while any(alive(w) for w in workers):  # an orphaned mapping process ends by itself (else: test timeout)
        time.sleep(0.1)

    with Store(db) as store:  # what the crash left: every AA'd message is in the inbox (and mapped, if processed)
        rows = dict(store.cursor().execute("SELECT control_id, status FROM hl7_inbox").fetchall())
        assert all(rows.get(f"K{i:05d}") in ("received", "processed") for i in acked)
        if ack_after == "processed":  # its row may still say 'received': AA goes out before the row is updated
            stored = {mrn for (mrn,) in store.cursor().execute(
                "SELECT json->'identifier'->0->>'value' FROM resources_current WHERE resource_type = 'Patient'"
            ).fetchall()}
            assert {f"MRN{i:05d}" for i in acked} <= stored

    proc, port = start_server(db, ack_after)  # restart; the sender resends all it has not seen AA'd, and more
    try:
        from ingest.hl7v2.mllp import exchange

        acks = asyncio.run(asyncio.wait_for(exchange("127.0.0.1", port, payloads, window=16), 120))
    finally:
        stop_server(proc)
    assert [msa(a)[1:3] for a in acks] == [["AA", f"K{i:05d}"] for i in range(len(payloads))]
    with Store(db) as store:  # the graceful stop drained processing: all of it is mapped, once
        assert Inbox(store).counts() == {"processed": len(payloads)}
        for i in acked:
            assert store.read("Patient", _patient_id(store, i)) is not None
        per_patient = store.cursor().execute(
            "SELECT count(*), max(version_id) FROM resources_current WHERE resource_type = 'Patient'"
        ).fetchone()
        assert per_patient == (len(payloads), 1)
        versions = store.cursor().execute(
            "SELECT count(*) FROM resource_versions WHERE resource_type = 'Patient'"
        ).fetchone()[0]
        assert versions == len(payloads)


def _patient_id(store: Store, i: int) -> str:
    ids = store.cursor().execute(
        "SELECT resource_ids FROM hl7_inbox WHERE control_id = ?", [f"K{i:05d}"]
    ).fetchone()[0]
    return next(r.split("/")[1] for r in json.loads(ids) if r.startswith("Patient/"))
