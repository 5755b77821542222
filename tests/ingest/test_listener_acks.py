"""The listener in-process with the real v2 mapper: ACK codes and ERR content, resends, conflicts, poison, replay."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from support import hanging_mapper

from ingest.hl7v2.er7 import Message
from ingest.hl7v2.inbox import Inbox
from ingest.hl7v2.listener import start_mllp_server
from ingest.hl7v2.mllp import encode_frame, exchange
from ingest.hl7v2.processor import map_v2, replay_dead_letters
from store.store import Store

TEMPLATE = (Path(__file__).resolve().parents[2] / "fixtures" / "mllp" / "adt_a01_template.hl7").read_text()


def adt(control_id: str, mrn: str, family: str = "Doe", ack_fields: str = "") -> bytes:
    text = TEMPLATE.format(
        app="LAB", facility="HOSP", control_id=control_id, ack_fields=ack_fields, mrn=mrn, family=family,
        given="Jane", visit=f"V{mrn}",
    )
    return text.replace("\n", "\r").encode()


def segments(ack: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in ack.decode().split("\r"):
        if line:
            out.setdefault(line[:3], []).append(line)
    return out


def msa(ack: bytes) -> list[str]:
    return segments(ack)["MSA"][0].split("|")


def err(ack: bytes) -> list[str]:
    return segments(ack)["ERR"][0].split("|")


def poison_marked(msg: Message) -> Any:
    """The real mapper, made to fail on MRN POISON (fault injection: a mapper bug hit by one message)."""
    if msg.segment("PID").get(3) == "POISON":
        raise KeyError("mapper bug triggered by this message")
    return map_v2(msg)


async def _run(store: Store, batches: list[tuple[list[bytes], int]], **opts: Any) -> list[list[bytes]]:
    opts.setdefault("map_workers", 0)  # map in a thread: the fault-injecting mapper is not importable by a worker
    server = await start_mllp_server(store, "127.0.0.1", 0, **opts)
    try:
        out = []
        for payloads, acks_per_message in batches:
            out.append(await exchange("127.0.0.1", server.port, payloads, acks_per_message=acks_per_message, window=8))
        return out
    finally:
        await server.shutdown()


def run(store: Store, payloads: list[bytes], acks_per_message: int = 1, **opts: Any) -> list[bytes]:
    return asyncio.run(asyncio.wait_for(_run(store, [(payloads, acks_per_message)], **opts), 60))[0]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "t.duckdb") as s:
        yield s


def test_original_mode_aa_echoes_control_id_and_maps_into_the_store(store: Store) -> None:
    acks = run(store, [adt("M1", "100"), adt("M2", "200")])
    assert [msa(a)[1:3] for a in acks] == [["AA", "M1"], ["AA", "M2"]]
    assert segments(acks[0])["MSH"][0].split("|")[8] == "ACK^A01^ACK"
    rows = store.cursor().execute("SELECT control_id, status, resource_ids FROM hl7_inbox ORDER BY inbox_id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("M1", "processed"), ("M2", "processed")]
    patients = [r for r in store.cursor().execute("SELECT json FROM resources WHERE resource_type='Patient'").fetchall()]
    assert len(patients) == 2
    assert any('"Patient/' in (r[2] or "") for r in rows)


def test_unparseable_gets_ar_with_err_and_is_kept(store: Store) -> None:
    bad = b"MSH|^~\\&|LAB|HOSP|R|RF|20240101||ADT^A01||P|2.5\rPID|1||1"
    acks = run(store, [bad, adt("M3", "300")])
    assert msa(acks[0])[1] == "AR"
    e = err(acks[0])
    assert e[2] == "MSH^1^10" and e[3].startswith("101^")
    assert msa(acks[1])[1:3] == ["AA", "M3"]
    assert Inbox(store).counts() == {"processed": 1, "rejected": 1}


@pytest.mark.parametrize(("header", "field", "code"), [("|X|2.5", 11, "202"), ("|P|9.9", 12, "203")])
def test_a_processing_or_version_id_outside_hl7_tables_gets_ar_and_nothing_is_mapped(
    store: Store, header: str, field: int, code: str
) -> None:
    bad = f"MSH|^~\\&|LAB|HOSP|R|RF|20240101||ADT^A01|H1{header}\rPID|1||H1||Doe^Jane".encode()
    acks = run(store, [bad, adt("H2", "302")])
    assert msa(acks[0])[1:3] == ["AR", "H1"]
    e = err(acks[0])
    assert e[2] == f"MSH^1^{field}" and e[3].startswith(f"{code}^")
    assert msa(acks[1])[1:3] == ["AA", "H2"]
    assert Inbox(store).counts() == {"processed": 1, "rejected": 1} and store.count("Patient") == 1


@pytest.mark.parametrize("pid", ["", "P1D|1||M1||Doe^Jane\r"])
def test_an_admission_without_its_pid_gets_ae_and_is_kept_not_mapped(store: Store, pid: str) -> None:
    bad = f"MSH|^~\\&|LAB|HOSP|R|RF|20240101||ADT^A01|N1|P|2.5\rEVN|A01|20240101\r{pid}PV1|1|I\r".encode()
    acks = run(store, [bad, adt("N2", "303")])
    assert msa(acks[0])[1:3] == ["AE", "N1"]
    e = err(acks[0])
    assert e[2].startswith("PID") and e[3].startswith("100^") and "required segment PID missing" in acks[0].decode()
    assert msa(acks[1])[1:3] == ["AA", "N2"]
    assert Inbox(store).counts() == {"processed": 1, "dead": 1} and store.count("Patient") == 1
    assert len(store.dead_letters()) == 1  # kept for a replay once the sender's message is fixed


def test_enhanced_mode_ca_then_application_ack(store: Store) -> None:
    acks = run(store, [adt("E1", "400", ack_fields="|||AL|AL"), adt("E2", "401", ack_fields="|||AL|AL")], 2)
    assert [msa(a)[1:3] for a in acks] == [["CA", "E1"], ["AA", "E1"], ["CA", "E2"], ["AA", "E2"]]
    assert segments(acks[0])["MSH"][0].split("|")[9] != segments(acks[1])["MSH"][0].split("|")[9]


def test_enhanced_mode_ce_for_conflict_and_cr_for_unreadable(store: Store) -> None:
    enh = "|||AL|NE"
    unreadable = b"MSH|^~\\&|LAB|HOSP|R|RF|20240101||ADT^A01|E9|P|2.5|||AL|NE\rP@D|1||1\r"
    acks = run(store, [adt("E5", "500", ack_fields=enh), adt("E5", "501", ack_fields=enh), unreadable])
    assert [msa(a)[1:3] for a in acks] == [["CA", "E5"], ["CE", "E5"], ["CR", "E9"]]
    assert err(acks[1])[3].startswith("205^") and err(acks[1])[2] == "MSH^1^10"
    assert err(acks[2])[3].startswith("100^")


def test_resend_gets_the_same_ack_and_creates_nothing(store: Store) -> None:
    first = run(store, [adt("D1", "600")])
    versions = store.cursor().execute("SELECT count(*) FROM resource_versions").fetchone()[0]
    again = run(store, [adt("D1", "600").replace(b"\r", b"\n")])  # same content, LF separators
    assert again == first
    assert store.cursor().execute("SELECT count(*) FROM resource_versions").fetchone()[0] == versions
    assert store.cursor().execute("SELECT count(*), max(resends) FROM hl7_inbox").fetchone() == (1, 1)


def test_same_control_id_different_content_is_flagged_and_recorded(store: Store) -> None:
    acks = run(store, [adt("C1", "700"), adt("C1", "700", family="Other")])
    assert msa(acks[0])[1] == "AA"
    assert msa(acks[1])[1] == "AE"
    e = err(acks[1])
    assert e[2] == "MSH^1^10" and e[3].startswith("205^") and "already used" in e[8]
    assert Inbox(store).counts() == {"conflict": 1, "processed": 1}
    assert store.count("Patient") == 1


def test_poison_message_is_dead_lettered_and_does_not_block_the_ones_behind(store: Store) -> None:
    msgs = [adt("P1", "801"), adt("P2", "POISON"), adt("P3", "803"), adt("P4", "804")]
    acks = run(store, msgs, mapper=poison_marked)
    assert [msa(a)[1] for a in acks] == ["AA", "AE", "AA", "AA"]
    e = err(acks[1])
    assert e[3].startswith("207^") and "mapping to FHIR failed" in e[8]
    assert Inbox(store).counts() == {"dead": 1, "processed": 3}
    letters = store.dead_letters()
    assert len(letters) == 1 and "POISON" in letters[0]["raw"]

    summary = replay_dead_letters(store)  # the fixed mapper
    assert (summary.attempted, summary.processed, summary.still_dead) == (1, 1, 0)
    assert Inbox(store).counts() == {"processed": 4}
    assert store.dead_letters() == []
    assert store.count("Patient") == 4


@pytest.mark.parametrize("workers, hang_s", [(1, 3600.0), (0, 2.0)])  # a process is stopped, a thread left
def test_a_message_whose_mapping_hangs_is_dead_lettered_and_the_rest_proceed(store: Store, workers: int,
                                                                            hang_s: float) -> None:
    msgs = [adt("H1", "901"), adt("H2", "HANG"), adt("H3", "903")]
    acks = run(store, msgs, map_workers=workers, map_timeout_s=0.5, mapper=partial(hanging_mapper, hang_s=hang_s))
    assert [msa(a)[1:3] for a in acks] == [["AA", "H1"], ["AE", "H2"], ["AA", "H3"]]
    assert "did not finish within 0.5 s" in err(acks[1])[8]
    assert Inbox(store).counts() == {"dead": 1, "processed": 2}
    assert "HANG" in store.dead_letters()[0]["raw"] and store.count("Patient") == 2


def test_a_message_that_kills_its_mapping_process_is_dead_lettered_and_the_workers_replaced(store: Store) -> None:
    msgs = [adt("C1", "911"), adt("C2", "CRASH"), adt("C3", "913")]
    acks = run(store, msgs, map_workers=1, mapper=partial(hanging_mapper, hang_s=0.0))
    assert [msa(a)[1:3] for a in acks] == [["AA", "C1"], ["AE", "C2"], ["AA", "C3"]]
    assert "stopped its worker process" in err(acks[1])[8]
    assert Inbox(store).counts() == {"dead": 1, "processed": 2}


def test_unsupported_type_is_stored_raw_and_acked_aa_with_a_note(store: Store) -> None:
    z = b"MSH|^~\\&|LAB|HOSP|R|RF|20240101||ZDT^Z01^ZDT_Z01|Z1|P|2.5\rEVN||20240101\rZDT|1|x\r"
    acks = run(store, [z])
    assert msa(acks[0])[1:3] == ["AA", "Z1"] and "not mapped" in msa(acks[0])[3]
    assert err(acks[0])[4] == "I"
    assert store.cursor().execute("SELECT status, raw FROM hl7_inbox").fetchone() == ("not-mapped", z.decode())


def test_oversize_frame_is_rejected_and_next_message_is_accepted(store: Store) -> None:
    big = adt("B1", "900") + b"NTE|1||" + b"x" * 20000 + b"\r"
    acks = run(store, [big, adt("B2", "901")], max_frame_bytes=10000)
    assert msa(acks[0])[1:3] == ["AR", "B1"] and "exceeds" in msa(acks[0])[3]
    assert msa(acks[1])[1:3] == ["AA", "B2"]


def test_many_connections_pipelined_each_gets_its_acks_in_order(store: Store) -> None:
    async def go() -> list[list[bytes]]:
        server = await start_mllp_server(  # mapping in a worker process; a backlog beyond the work queue
            store, "127.0.0.1", 0, max_inflight_per_connection=4, intake_queue_size=8, work_queue_size=16,
            map_workers=1,
        )
        try:
            jobs = [
                exchange("127.0.0.1", server.port, [adt(f"K{c}-{i}", f"{c}{i:03d}") for i in range(25)], window=10)
                for c in range(6)
            ]
            return await asyncio.gather(*jobs)
        finally:
            await server.shutdown()

    results = asyncio.run(asyncio.wait_for(go(), 120))
    for c, acks in enumerate(results):
        assert [msa(a)[1:3] for a in acks] == [["AA", f"K{c}-{i}"] for i in range(25)]
    assert Inbox(store).counts() == {"processed": 150}


def test_one_inbox_commit_gathers_the_frames_of_the_open_connections(store: Store,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop-and-wait senders on several connections share a commit; a lone connection never waits for others."""
    import ingest.hl7v2.listener as listener

    monkeypatch.setattr(listener, "GROUP_WAIT_S", 30.0)  # long enough that only the gathering can end the wait

    async def go() -> tuple[list[bytes], list[bytes], int]:
        server = await start_mllp_server(store, "127.0.0.1", 0, map_workers=0, ack_after="commit")
        try:
            lone = await exchange("127.0.0.1", server.port, [adt("L-1", "900")])  # one connection: no wait
            streams = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
            while server.stats["connections"] < 4:  # the three are accepted (the lone one counted before)
                await asyncio.sleep(0.01)
            before = server.stats["committed_batches"]
            for i, (_, writer) in enumerate(streams):  # apart: without gathering, each would commit alone
                writer.write(encode_frame(adt(f"G-{i}", f"91{i}")))
                await writer.drain()
                await asyncio.sleep(0.2)
            acks = [await reader.readuntil(b"\x1c\x0d") for reader, _ in streams]
            for _, writer in streams:
                writer.close()
            return lone, acks, server.stats["committed_batches"] - before
        finally:
            await server.shutdown()

    lone, acks, commits = asyncio.run(asyncio.wait_for(go(), 20))
    assert msa(lone[0])[1:3] == ["AA", "L-1"]
    assert [msa(a.strip(b"\x0b\x1c\x0d"))[1:3] for a in acks] == [["AA", f"G-{i}"] for i in range(3)]
    assert commits == 1


@pytest.mark.parametrize("ack_after", ["processed", "commit"])
def test_a_taken_port_is_a_clear_error_and_nothing_is_left_running(store: Store, ack_after: str) -> None:
    """Under ``commit`` the mapping process starts before the bind: it is stopped again."""
    import socket
    import threading

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    threads = threading.active_count()
    try:
        with pytest.raises(OSError, match=f"cannot listen for MLLP on 127.0.0.1:{port}: Address already in use"):
            asyncio.run(asyncio.wait_for(start_mllp_server(store, "127.0.0.1", port, ack_after=ack_after), 60))
    finally:
        taken.close()
    assert threading.active_count() == threads  # no stage, pool manager or inbox thread left behind

    async def again() -> list[bytes]:  # the store serves a listener on a free port as before
        server = await start_mllp_server(store, "127.0.0.1", 0, map_workers=0)
        try:
            return await exchange("127.0.0.1", server.port, [adt("T-1", "950")])
        finally:
            await server.shutdown()

    assert msa(asyncio.run(asyncio.wait_for(again(), 60))[0])[1:3] == ["AA", "T-1"]
