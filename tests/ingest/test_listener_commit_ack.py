"""The commit ACK policy (``ack_after="commit"``) in-process, over real MLLP sockets and the real v2 mapper.

AA goes out once the message is committed in the inbox; mapping follows. A gate in
front of the real mapper holds mapping back, so "AA before mapping" is observed, not
inferred from timing; a wrapper failing on one MRN injects a mapper bug.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fhirtwin.cli import _settings, build_parser
from ingest.hl7v2.er7 import Message
from ingest.hl7v2.inbox import Inbox
from ingest.hl7v2.listener import MLLPServer, start_mllp_server
from ingest.hl7v2.mllp import exchange
from ingest.hl7v2.processor import Work, map_batch, map_v2, replay_dead_letters
from store.store import Store

TEMPLATE = (Path(__file__).resolve().parents[2] / "fixtures" / "mllp" / "adt_a01_template.hl7").read_text()


def adt(control_id: str, mrn: str, family: str = "Doe") -> bytes:
    text = TEMPLATE.format(
        app="LAB", facility="HOSP", control_id=control_id, ack_fields="", mrn=mrn, family=family, given="Jane",
        visit=f"V{mrn}",
    )
    return text.replace("\n", "\r").encode()


def msa(ack: bytes) -> list[str]:
    line = next(s for s in ack.decode().split("\r") if s.startswith("MSA"))
    return line.split("|")


class GatedMapper:
    """The real mapper behind a gate (closed: mapping waits); fails on MRN POISON while ``poison`` is set."""

    def __init__(self, *, open_: bool = False, poison: bool = False) -> None:
        self.gate = threading.Event()
        if open_:
            self.gate.set()
        self.poison = poison
        self.calls = 0

    def __call__(self, msg: Message) -> Any:
        self.gate.wait()
        self.calls += 1
        if self.poison and msg.segment("PID").get(3) == "POISON":
            raise KeyError("mapper bug triggered by this message")
        return map_v2(msg)


async def start(store: Store, mapper: Callable[[Message], Any]) -> MLLPServer:
    return await start_mllp_server(store, "127.0.0.1", 0, ack_after="commit", mapper=mapper, map_workers=0)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for background processing (no timing is asserted: the test's outer timeout is the only limit)."""
    while not condition():
        await asyncio.sleep(0.02)


def settled(store: Store, n: int) -> Callable[[], bool]:
    """At least ``n`` inbox rows have left ``received`` (read with a plain query while the listener runs)."""
    query = "SELECT count(*) FROM hl7_inbox WHERE status <> 'received'"
    return lambda: store.cursor().execute(query).fetchone()[0] >= n


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "t.duckdb") as s:
        yield s


def test_aa_is_sent_before_mapping_and_the_resources_follow(store: Store) -> None:
    mapper = GatedMapper()

    async def go() -> tuple[list[bytes], tuple[dict[str, int], int, int], list[bytes], list[bytes]]:
        server = await start(store, mapper)
        try:
            acks = await exchange("127.0.0.1", server.port, [adt("G1", "100"), adt("G2", "200")], window=2)
            statuses = store.cursor().execute("SELECT status, count(*) FROM hl7_inbox GROUP BY status").fetchall()
            before = (dict(statuses), store.count("Patient"), mapper.calls)
            resend = await exchange("127.0.0.1", server.port, [adt("G1", "100")])  # still unmapped
            mapper.gate.set()
            await until(settled(store, 2))
            later = await exchange("127.0.0.1", server.port, [adt("G2", "200")])  # mapped by now
            return acks, before, resend, later
        finally:
            mapper.gate.set()
            await server.shutdown()

    acks, before, resend, later = run(go())
    assert [msa(a)[1:3] for a in acks] == [["AA", "G1"], ["AA", "G2"]]
    assert before == ({"received": 2}, 0, 0)  # answered while nothing was mapped
    assert resend == acks[:1]  # a resend of a committed, unmapped message: the very same AA
    assert later == acks[1:]  # and of a mapped one: still the AA sent at commit
    rows = store.cursor().execute(
        "SELECT control_id, status, ack_on_commit, resource_ids, ack FROM hl7_inbox ORDER BY inbox_id"
    ).fetchall()
    assert [r[:3] for r in rows] == [("G1", "processed", True), ("G2", "processed", True)]
    assert [r[4].encode() for r in rows] == acks  # the row keeps the AA that went out
    patient_ids = [r.split("/")[1] for r in json.loads(rows[0][3]) if r.startswith("Patient/")]
    assert store.read("Patient", patient_ids[0])["name"][0]["family"] == "Doe"
    assert store.count("Patient") == 2


def test_mapping_failure_is_aa_then_dead_lettered_and_replays(store: Store) -> None:
    mapper = GatedMapper(open_=True, poison=True)
    msgs = [adt("P1", "801"), adt("P2", "POISON"), adt("P3", "803")]

    async def go() -> tuple[list[bytes], list[bytes]]:
        server = await start(store, mapper)
        try:
            acks = await exchange("127.0.0.1", server.port, msgs, window=3)
            await until(settled(store, 3))
            return acks, await exchange("127.0.0.1", server.port, msgs[1:2])
        finally:
            await server.shutdown()

    acks, resend = run(go())
    assert [msa(a)[1] for a in acks] == ["AA", "AA", "AA"]  # the poison message does not block P3 either
    assert resend == acks[1:2]  # the ACK sent is the row's ACK for good, even after the failure
    assert Inbox(store).counts() == {"dead": 1, "processed": 2}
    letters = store.dead_letters()
    assert len(letters) == 1 and "POISON" in letters[0]["raw"]
    assert "mapping to FHIR failed" in letters[0]["reason"][0]["diagnostics"]
    error = store.cursor().execute("SELECT error::VARCHAR FROM hl7_inbox WHERE status = 'dead'").fetchone()[0]
    assert "KeyError" in error

    summary = replay_dead_letters(store)  # the fixed (real) mapper
    assert (summary.attempted, summary.processed, summary.still_dead) == (1, 1, 0)
    assert Inbox(store).counts() == {"processed": 3}
    assert store.dead_letters() == []
    assert store.count("Patient") == 3
    assert store.cursor().execute("SELECT ack FROM hl7_inbox WHERE control_id = 'P2'").fetchone()[0].encode() == resend[0]


def test_malformed_and_conflicting_messages_are_still_refused_at_once(store: Store) -> None:
    mapper = GatedMapper()  # never opened before the answers: these answers cannot come from mapping
    bad = b"MSH|^~\\&|LAB|HOSP|R|RF|20240101||ADT^A01||P|2.5\rPID|1||1"

    async def go() -> list[bytes]:
        server = await start(store, mapper)
        try:
            return await exchange("127.0.0.1", server.port, [bad, adt("C1", "700"), adt("C1", "700", "Other")])
        finally:
            mapper.gate.set()
            await server.shutdown()

    acks = run(go())
    assert [msa(a)[1] for a in acks] == ["AR", "AA", "AE"]
    assert "|101^" in acks[0].decode() and "|205^" in acks[2].decode()


def test_committed_rows_left_by_a_stop_are_mapped_at_the_next_start_without_duplicates(store: Store) -> None:
    stuck = GatedMapper()  # mapping never gets through before the stop
    payloads = [adt(f"R{i}", f"9{i:02d}") for i in range(12)]

    async def first_run() -> list[bytes]:
        server = await start(store, stuck)
        acks = await exchange("127.0.0.1", server.port, payloads, window=4)
        await server.shutdown(timeout_s=0.2)  # gives up on processing: rows stay 'received'
        stuck.gate.set()  # lets the abandoned mapping thread end; nothing writes its result
        return acks

    acks = run(first_run())
    assert [msa(a)[1:3] for a in acks] == [["AA", f"R{i}"] for i in range(12)]
    assert Inbox(store).counts() == {"received": 12} and store.count("Patient") == 0

    async def restart() -> list[bytes]:
        server = await start(store, GatedMapper(open_=True))
        try:
            resent = await exchange("127.0.0.1", server.port, payloads[:3])  # the sender resends some too
            await until(settled(store, 12))
            return resent
        finally:
            await server.shutdown()

    assert run(restart()) == acks[:3]
    assert Inbox(store).counts() == {"processed": 12}
    assert store.cursor().execute(
        "SELECT count(*), max(version_id) FROM resources_current WHERE resource_type = 'Patient'"
    ).fetchone() == (12, 1)


def test_a_backlog_larger_than_the_work_queue_is_read_back_from_the_inbox_in_order(store: Store) -> None:
    mapper = GatedMapper()
    # one patient, updated 30 times: the last name received must be the one stored
    payloads = [adt(f"O{i}", "555", family=f"Name{i:02d}") for i in range(30)]

    async def go() -> list[bytes]:
        server = await start_mllp_server(
            store, "127.0.0.1", 0, ack_after="commit", mapper=mapper, map_workers=0, work_queue_size=4, batch_max=3
        )
        try:
            acks = await exchange("127.0.0.1", server.port, payloads, window=8)
            mapper.gate.set()
            await until(settled(store, 30))
            assert server.stats["spilled"] >= 1
            return acks
        finally:
            mapper.gate.set()
            await server.shutdown()

    acks = run(go())
    assert [msa(a)[1] for a in acks] == ["AA"] * 30
    assert Inbox(store).counts() == {"processed": 30}
    patient = store.cursor().execute("SELECT json FROM resources_current WHERE resource_type = 'Patient'").fetchall()
    assert len(patient) == 1 and '"Name29"' in patient[0][0]


def test_cli_flag_and_environment_choose_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    for command in ("serve", "mllp"):
        assert _settings(build_parser().parse_args([command])).mllp_ack_after == "processed"
        args = build_parser().parse_args([command, "--mllp-ack-after", "commit"])
        assert _settings(args).mllp_ack_after == "commit"
    monkeypatch.setenv("FHIRTWIN_MLLP_ACK_AFTER", "commit")
    assert _settings(build_parser().parse_args(["mllp"])).mllp_ack_after == "commit"
    assert _settings(build_parser().parse_args(["serve", "--mllp-ack-after", "processed"])).mllp_ack_after == "processed"
    monkeypatch.setenv("FHIRTWIN_MLLP_ACK_AFTER", "later")
    with pytest.raises(SystemExit, match="FHIRTWIN_MLLP_ACK_AFTER"):
        build_parser()
    with Store() as store, pytest.raises(ValueError, match="ack_after"):
        run(start_mllp_server(store, "127.0.0.1", 0, ack_after="later"))



def test_cli_flag_and_environment_set_the_mapping_timeout(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("serve", "mllp"):
        assert _settings(build_parser().parse_args([command])).mllp_map_timeout_s == 60.0
        args = build_parser().parse_args([command, "--mllp-map-timeout", "2.5"])
        assert _settings(args).mllp_map_timeout_s == 2.5
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--mllp-map-timeout", "0"])
        assert "--mllp-map-timeout" in capsys.readouterr().err
    monkeypatch.setenv("FHIRTWIN_MLLP_MAP_TIMEOUT", "7")
    assert _settings(build_parser().parse_args(["serve"])).mllp_map_timeout_s == 7.0
    monkeypatch.setenv("FHIRTWIN_MLLP_MAP_TIMEOUT", "soon")
    with pytest.raises(SystemExit, match="FHIRTWIN_MLLP_MAP_TIMEOUT"):
        build_parser()
    with Store() as store, pytest.raises(ValueError, match="map_timeout_s"):
        run(start_mllp_server(store, "127.0.0.1", 0, map_timeout_s=0))


def test_ports_out_of_range_are_refused_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for command, flag in (("serve", "--port"), ("serve", "--mllp-port"), ("mllp", "--mllp-port")):
        assert getattr(_settings(build_parser().parse_args([command, flag, "0"])), flag[2:].replace("-", "_")) == 0
        for bad in ("-1", "65536", "x"):
            with pytest.raises(SystemExit):
                build_parser().parse_args([command, flag, bad])
            assert f"argument {flag}: invalid port value" in capsys.readouterr().err
    monkeypatch.setenv("FHIRTWIN_MLLP_PORT", "2576")
    assert _settings(build_parser().parse_args(["mllp"])).mllp_port == 2576
    monkeypatch.setenv("FHIRTWIN_MLLP_PORT", "70000")
    with pytest.raises(SystemExit, match="FHIRTWIN_MLLP_PORT must be a port number from 0 to 65535"):
        build_parser()


def test_mapping_builds_no_ack_for_a_row_answered_at_commit() -> None:
    """The AA of a row answered at commit is already in the inbox: mapping maps it all the same
    but builds no second one (the unanswered row gets its AA from mapping, as under ``processed``)."""
    works = [Work(1, adt("W1", "301").decode(), answered=True), Work(2, adt("W2", "302").decode())]
    mapped = map_batch(works)
    assert [o.status for o in mapped.outcomes] == ["processed", "processed"]
    assert mapped.outcomes[0].ack == ""
    assert msa(mapped.outcomes[1].ack.encode())[1:3] == ["AA", "W2"]
    sizes = [stop - start for start, stop in mapped.spans]
    assert sizes[0] == sizes[1] > 0  # the answered row's resources are prepared like the other's
