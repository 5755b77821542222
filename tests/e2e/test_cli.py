"""The ``fhirtwin`` command line as a user runs it (subprocesses, real files, a real server)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support import FHIRTWIN, FIXTURES, free_port, run


@pytest.mark.parametrize("command", ["demo", "serve", "ingest"])
def test_every_subcommand_has_help(command: str) -> None:
    out = run(command, "--help")
    assert out.returncode == 0
    assert "--db" in out.stdout
    if command != "ingest":
        assert "--host" in out.stdout and "--port" in out.stdout


def test_serve_documents_mllp_port() -> None:
    assert "--mllp-port" in run("serve", "--help").stdout


def test_ingest_reports_summary_and_rejects_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "mixed.ndjson"
    good = (FIXTURES / "synthea" / "ndjson" / "Patient.ndjson").read_text().splitlines()[:2]
    bad.write_text("\n".join([good[0], '{"resourceType": "Patient", "id": ', good[1]]) + "\n")
    db = tmp_path / "t.duckdb"
    out = run("ingest", "--db", str(db), str(bad))
    assert out.returncode == 1
    assert "2 accepted" in out.stdout and "1 rejected" in out.stdout
    assert f"{bad}:2" in out.stdout.replace("\n", "")


def test_ingest_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    out = run("ingest", "--db", str(tmp_path / "t.duckdb"), str(tmp_path / "nope.ndjson"))
    assert out.returncode == 2
    assert "no such file" in out.stdout


def test_environment_sets_db_and_flag_wins(tmp_path: Path) -> None:
    env_db, flag_db = tmp_path / "env.duckdb", tmp_path / "flag.duckdb"
    patients = str(FIXTURES / "synthea" / "ndjson" / "Patient.ndjson")
    assert run("ingest", patients, env={"FHIRTWIN_DB": str(env_db)}).returncode == 0
    assert env_db.exists()
    assert run("ingest", "--db", str(flag_db), patients, env={"FHIRTWIN_DB": str(env_db)}).returncode == 0
    assert flag_db.exists()


def test_a_store_with_little_memory_still_knows_a_replayed_file(tmp_path: Path) -> None:
    """With room for a few dozen current versions, a replay compares with the database: nothing new."""
    db, encounters = tmp_path / "t.duckdb", str(FIXTURES / "synthea" / "ndjson" / "Encounter.ndjson")
    first = run("ingest", "--db", str(db), "--cache-mb", "0.05", encounters)
    assert first.returncode == 0 and "1019 accepted" in first.stdout, first.stdout
    again = run("ingest", "--db", str(db), encounters, env={"FHIRTWIN_CACHE_MB": "0.05"})
    assert again.returncode == 0 and "0 accepted" in again.stdout and "1019 unchanged" in again.stdout, again.stdout
    for flag in ("--cache-mb", "--db-memory-mb"):
        for bad in ("0", "-1", "x", "nan"):
            out = run("ingest", "--db", str(db), flag, bad, encounters)
            assert out.returncode == 2 and f"{flag}: invalid megabytes value" in out.stderr, out.stderr
    limited = run("ingest", "--db", str(db), "--db-memory-mb", "256", encounters)
    assert limited.returncode == 0 and "1019 unchanged" in limited.stdout
    out = run("ingest", "--db", str(db), encounters, env={"FHIRTWIN_CACHE_MB": "lots"})
    assert out.returncode != 0 and "FHIRTWIN_CACHE_MB must be a positive number of megabytes" in out.stderr + out.stdout


def test_demo_no_serve_prints_predictions_and_urls(tmp_path: Path) -> None:
    out = run("demo", "--no-serve", "--db", str(tmp_path / "demo.duckdb"), "--port", "8999")
    assert out.returncode == 0, out.stderr
    assert "twin predictions" in out.stdout
    assert "http://127.0.0.1:8999/fhir/metadata" in out.stdout


def test_serve_answers_fhir_until_stopped(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    assert run("ingest", "--db", str(db), str(FIXTURES / "synthea" / "ndjson" / "Patient.ndjson")).returncode == 0
    port = free_port()
    proc = subprocess.Popen(
        [*FHIRTWIN, "serve", "--db", str(db), "--port", str(port), "--mllp-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/fhir"
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = httpx.get(f"{base}/metadata", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert resp.status_code == 200
        assert resp.json()["resourceType"] == "CapabilityStatement"
        bundle = httpx.get(f"{base}/Patient", params={"_count": 10}).json()
        assert bundle["total"] == 37
        missing = httpx.get(f"{base}/Patient/does-not-exist")
        assert missing.status_code == 404
        assert missing.json()["resourceType"] == "OperationOutcome"
        # the served file is locked to this process: other commands say so in one line, no traceback
        for command in (("ingest", "--db", str(db), str(FIXTURES / "synthea" / "ndjson" / "Patient.ndjson")),
                        ("twin", "list", "--db", str(db))):
            refused = run(*command, env={"COLUMNS": "400"})
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert f"is in use by process {proc.pid}" in refused.stdout and "Traceback" not in refused.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_ingest_of_a_folder_keeps_unmapped_messages_without_failing(tmp_path: Path) -> None:
    """A feed folder: an admit, a message type with no FHIR map, a README. Exit 0 (nothing was
    wrong), the unmapped message said and kept, the README skipped; replay keeps it as it is."""
    folder = tmp_path / "feed"
    folder.mkdir()
    hl7 = FIXTURES / "hl7v2"
    (folder / "a.hl7").write_bytes((hl7 / "adt_a01_admit.hl7").read_bytes()
                                   + (hl7 / "hl7apy_ZDT_Z01_custom_Z_message.hl7").read_bytes())
    (folder / "README.md").write_text("feed of 1 March\n")
    db = str(tmp_path / "t.duckdb")
    out = run("ingest", "--db", db, str(folder))
    text = out.stdout.replace("\n", " ")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 HL7 v2 messages not mapped" in text and "0 rejected" in text
    assert "1 files of unknown type skipped" in text
    assert "ZDT^Z01 is not mapped to FHIR" in text
    replay = run("replay", "--db", db)
    assert replay.returncode == 0 and "1 still not mapped" in replay.stdout


@pytest.mark.parametrize("command", ["mllp", "serve"])
def test_a_taken_mllp_port_is_a_clear_error(tmp_path: Path, command: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        extra = ["--port", str(free_port())] if command == "serve" else []
        out = run(command, "--db", str(tmp_path / "t.duckdb"), "--host", "127.0.0.1", "--mllp-port", str(port),
                  *extra)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"cannot listen for MLLP on 127.0.0.1:{port}: Address already in use" in out.stdout
    assert "Traceback" not in out.stderr


def test_demo_with_a_missing_data_folder_says_so(tmp_path: Path) -> None:
    out = run("demo", "--no-serve", "--db", str(tmp_path / "d.duckdb"), "--data", str(tmp_path / "nope"))
    assert out.returncode == 2 and f"no such file or folder: {tmp_path / 'nope'}" in out.stdout.replace("\n", "")


def test_an_import_whose_clustering_fails_keeps_its_data_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import duckdb

    from fhirtwin import cli
    from store.store import Store

    def out_of_memory(store: Store) -> None:
        raise duckdb.OutOfMemoryException("Out of Memory Error: failed to pin block\nPossible solutions: …")

    monkeypatch.setattr(cli, "CLUSTER_AFTER_ROWS", 1)
    monkeypatch.setattr(Store, "optimize", out_of_memory)
    db, patients = tmp_path / "t.duckdb", FIXTURES / "synthea" / "ndjson" / "Patient.ndjson"
    assert cli.main(["ingest", "--db", str(db), str(patients)]) == 0
    out = capsys.readouterr().out
    assert "clustering the search index stopped: Out of Memory Error: failed to pin block (searches stay" in out
    with Store(db, read_only=True) as store:
        assert store.count("Patient") == len(patients.read_text().splitlines())


def test_ingest_warns_with_file_and_line_when_a_result_type_is_inferred(tmp_path: Path) -> None:
    batch = tmp_path / "results.hl7"
    header = "MSH|^~\\&|LAB|H|EHR|H|20260301120000||ORU^R01^ORU_R01|{}|P|2.5.1\r"
    body = "PID|1||555^^^H^MR||Doe^Jane\rOBR|1|P1|F1|2345-7^Glucose^LN\rOBX|1|{}|2345-7^Glucose^LN|1|105|mg/dL|||||F\r"
    batch.write_text(header.format("typed") + body.format("NM") + header.format("untyped") + body.format(""))
    out = run("ingest", "--db", str(tmp_path / "t.duckdb"), str(batch), env={"COLUMNS": "400"})
    assert out.returncode == 0, out.stdout + out.stderr
    [warning] = [line for line in out.stdout.splitlines() if line.startswith("warning")]
    assert f"{batch}:5:" in warning and "OBX-2 is empty: OBX-5 read as NM" in warning and "OBX[4]-2" in warning
