"""Times a sender writes without a UTC offset are in its time zone (``--hl7-timezone``), daylight saving
included: through the mapper, a file import, the MLLP listener (mapping in a worker process) and the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import run

from fhirtwin.settings import DEFAULT_HL7_TIMEZONE
from ingest.hl7v2 import parse_message
from ingest.hl7v2.listener import start_mllp_server
from ingest.hl7v2.mllp import exchange
from ingest.hl7v2.processor import default_mapper, map_v2
from ingest.hl7v2.timezone import DEFAULT_TIMEZONE, check_timezone, offset_at
from ingest.pipeline import Ingestor
from store.store import Store


def result(msh7: str = "20240710083000", obx14: str = "202407100800") -> str:
    return (f"MSH|^~\\&|LAB|GHH|FHIRTWIN|HOSP|{msh7}||ORU^R01^ORU_R01|TZ-{msh7}|P|2.5.1\r"
            "PID|1||MRN7^^^GHH^MR||ROE^ANN||19800101|F\r"
            "OBR|1|PLC7|FIL7|2345-7^Glucose^LN\r"
            f"OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|||||F|||{obx14}\r")


def effective(resources: list[dict]) -> str:
    (obs,) = [r for r in resources if r["resourceType"] == "Observation"]
    return obs["effectiveDateTime"]


def test_offsets_follow_the_zone_and_its_calendar() -> None:
    assert offset_at("America/Chicago", "20240115083000") == "-06:00"  # standard time
    assert offset_at("America/Chicago", "20240710083000") == "-05:00"  # daylight saving time
    assert offset_at("Asia/Kolkata", "2024") == "+05:30"
    assert offset_at("+01:00", "20240710") == "+01:00" and offset_at("UTC", "") == "+00:00"
    assert offset_at("Europe/Berlin", "") in ("+01:00", "+02:00")  # no MSH-7: the offset now
    for bad in ("Mars/Olympus", "+25:00", "CST6CDT7", ""):
        with pytest.raises(ValueError, match="IANA"):
            check_timezone(bad)
    assert DEFAULT_HL7_TIMEZONE == DEFAULT_TIMEZONE == "UTC"


def test_the_mapper_puts_the_senders_offset_on_times_without_one() -> None:
    assert effective(map_v2(parse_message(result())).resources) == "2024-07-10T08:00:00Z"
    assert effective(map_v2(parse_message(result()), "America/Chicago").resources) == "2024-07-10T08:00:00-05:00"
    winter = result("20240115083000", "202401150800")
    assert effective(map_v2(parse_message(winter), "America/Chicago").resources) == "2024-01-15T08:00:00-06:00"
    sent = result("20240710083000+0200")  # MSH-7's own offset wins over the setting
    assert effective(map_v2(parse_message(sent), "America/Chicago").resources) == "2024-07-10T08:00:00+02:00"


def test_a_file_import_and_its_replay_use_the_zone(tmp_path: Path) -> None:
    path = tmp_path / "results.hl7"
    path.write_text(result())
    store = Store()
    Ingestor(store, hl7_timezone="America/New_York").ingest_paths([path])
    obs = store.cursor().execute("SELECT json->>'effectiveDateTime' FROM resources WHERE resource_type = "
                                 "'Observation'").fetchone()[0]
    assert obs == "2024-07-10T08:00:00-04:00"


def test_the_listener_maps_in_a_worker_process_with_the_zone(tmp_path: Path) -> None:
    async def send(store: Store) -> list[bytes]:
        server = await start_mllp_server(store, "127.0.0.1", 0, ack_after="processed", map_workers=1,
                                         mapper=default_mapper("America/Chicago"))
        try:
            return await exchange("127.0.0.1", server.port, [result().encode()])
        finally:
            await server.shutdown()

    with Store(tmp_path / "t.duckdb") as store:
        (ack,) = asyncio.run(asyncio.wait_for(send(store), 60))
        assert b"MSA|AA|" in ack
        (obs,) = [store.read("Observation", rid) for (rid,) in store.cursor().execute(
            "SELECT id FROM resources WHERE resource_type = 'Observation'").fetchall()]
        assert obs["effectiveDateTime"] == "2024-07-10T08:00:00-05:00"


def test_the_command_line_takes_the_zone_from_flag_or_environment(tmp_path: Path) -> None:
    path, db = tmp_path / "results.hl7", tmp_path / "t.duckdb"
    path.write_text(result())
    assert run("ingest", "--db", str(db), "--hl7-timezone", "Asia/Kolkata", str(path)).returncode == 0
    with Store(db, read_only=True) as store:
        value = store.cursor().execute("SELECT json->>'effectiveDateTime' FROM resources WHERE resource_type = "
                                       "'Observation'").fetchone()[0]
    assert value == "2024-07-10T08:00:00+05:30"
    bad = run("ingest", "--db", str(db), "--hl7-timezone", "Mars/Olympus", str(path))
    assert bad.returncode == 2 and "--hl7-timezone: invalid hl7_timezone value" in bad.stderr
    env = run("replay", "--db", str(db), env={"FHIRTWIN_HL7_TIMEZONE": "Mars/Olympus"})
    assert env.returncode != 0 and "FHIRTWIN_HL7_TIMEZONE must be UTC, a UTC offset" in env.stdout + env.stderr
