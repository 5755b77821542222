"""CLI data commands as a user runs them: view run, export, replay, and serve with its MLLP listener."""

from __future__ import annotations

import csv
import io
import socket
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from support import FHIRTWIN, FIXTURES, free_port, run, wait_for_serve

from ingest.pipeline import Ingestor
from ingest.records import Problem
from mapping.views import VIEWS_DIR
from store.store import Store

VIEW = FIXTURES / "views" / "hba1c_view.json"
OBSERVATIONS = FIXTURES / "synthea" / "ndjson" / "Observation.ndjson"


@pytest.fixture(scope="module")
def obs_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("cli") / "obs.duckdb"
    assert run("ingest", "--db", str(db), str(OBSERVATIONS)).returncode == 0
    return db


def expected_hba1c() -> set[tuple[str, float]]:
    out = set()
    for line in OBSERVATIONS.read_bytes().splitlines():
        obs = orjson.loads(line)
        if any(c["code"] == "4548-4" and c["system"] == "http://loinc.org" for c in obs["code"]["coding"]):
            out.add((obs["id"], round(obs["valueQuantity"]["value"], 9)))
    return out


def test_view_run_csv_and_parquet(obs_db: Path, tmp_path: Path) -> None:
    out = run("view", "run", "--db", str(obs_db), str(VIEW))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {(r["id"], round(float(r["value"]), 9)) for r in rows} == expected_hba1c()
    target = tmp_path / "hba1c.parquet"
    assert run("view", "run", "--db", str(obs_db), str(VIEW), "--format", "parquet", "--out", str(target)).returncode == 0
    table = pq.read_table(target)
    assert table.num_rows == len(rows) and table.column_names == ["id", "patient", "time", "value"]


def test_view_run_rejects_a_broken_view(obs_db: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "ViewDefinition", "resource": "Observation", "select": [{"column": [{"path": "id"}]}]}')
    out = run("view", "run", "--db", str(obs_db), str(bad))
    assert out.returncode == 2
    assert "invalid ViewDefinition" in out.stdout


def test_a_column_of_no_fhir_type_is_an_invalid_view(obs_db: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad_type.json"
    bad.write_text('{"resourceType": "ViewDefinition", "resource": "Observation", "status": "active", '
                   '"select": [{"column": [{"name": "c", "path": "status", "type": "Observa tion"}]}]}')
    out = run("view", "run", "--db", str(obs_db), str(bad))
    assert out.returncode == 2
    assert "type must name a FHIR R4 type, got 'Observa tion'" in out.stdout.replace("\n", "")


def test_a_view_the_data_breaks_is_a_clear_error(obs_db: Path, tmp_path: Path) -> None:
    """Blood pressure has two components: a single-valued column of their codes cannot hold them."""
    view = tmp_path / "components.json"
    view.write_text('{"resourceType": "ViewDefinition", "resource": "Observation", "status": "active", '
                    '"select": [{"column": [{"name": "id", "path": "id"}, '
                    '{"name": "component_code", "path": "component.code.coding.code"}]}]}')
    out = run("view", "run", "--db", str(obs_db), str(view))
    assert out.returncode == 1
    text = out.stdout.replace("\n", "")
    assert "the view failed on the data" in text and "component_code" in text
    assert "Traceback" not in out.stderr


def test_shipped_views_are_listed_and_run_by_name(obs_db: Path) -> None:
    listed = run("view", "list")
    assert listed.returncode == 0 and "glucose_readings" in listed.stdout and "[lb_av]" in listed.stdout
    by_name = run("view", "run", "--db", str(obs_db), "glucose_readings")
    by_file = run("view", "run", "--db", str(obs_db), str(VIEWS_DIR / "glucose_readings.json"))
    assert by_name.returncode == 0 and by_name.stdout == by_file.stdout
    assert len(by_name.stdout.splitlines()) > 1  # the Synthea glucose readings
    unknown = run("view", "run", "--db", str(obs_db), "glucose_reading")
    assert unknown.returncode == 2 and "shipped: body_height" in unknown.stdout


def test_export_parquet_partitioned_and_ndjson(obs_db: Path, tmp_path: Path) -> None:
    assert run("export", "--db", str(obs_db), "--format", "parquet", "--out", str(tmp_path / "pq")).returncode == 0
    files = list((tmp_path / "pq" / "resource_type=Observation").glob("*.parquet"))
    assert files and sum(pq.read_table(f).num_rows for f in files) == 9367
    assert run("export", "--db", str(obs_db), "--format", "ndjson", "--out", str(tmp_path / "nd")).returncode == 0
    lines = (tmp_path / "nd" / "Observation.ndjson").read_bytes().splitlines()
    assert len(lines) == 9367 and orjson.loads(lines[0])["resourceType"] == "Observation"


def test_dead_letters_replay_after_the_fix(tmp_path: Path) -> None:
    """Records refused by a rule are kept; once the rule is fixed, replay lands them and marks them replayed."""
    src = tmp_path / "p.ndjson"
    src.write_bytes(b'{"resourceType":"Patient","id":"a","gender":"female"}\n{"resourceType":"Patient","id":"b"}\n')

    def too_strict(res: dict) -> list[Problem]:
        return [] if "gender" in res else [Problem("gender required by local rule", "Patient.gender", "required")]

    store = Store(tmp_path / "d.duckdb")
    first = Ingestor(store, validator=too_strict).ingest_paths([src])
    assert (first.accepted, first.rejected) == (1, 1)
    (letter,) = store.dead_letters()
    assert letter["line"] == 2 and letter["reason"][0]["expression"] == ["Patient.gender"]
    replay = Ingestor(store).replay_dead_letters()
    assert replay.accepted == 1 and store.read("Patient", "b") is not None
    assert store.dead_letters() == []
    assert store.dead_letters(include_replayed=True)[0]["replayed"]
    store.close()


def _mllp(port: int, message: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the ACK"
            data += chunk
    return data.strip(b"\x0b\x1c\r").decode()


def test_serve_runs_fhir_and_mllp_together(tmp_path: Path) -> None:
    port, mllp_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*FHIRTWIN, "serve", "--db", str(tmp_path / "s.duckdb"), "--port", str(port), "--mllp-port", str(mllp_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_serve(proc, port, mllp_port)
        msg = "\r".join([
            "MSH|^~\\&|LAB|HOSP|FHIRTWIN|HOSP|20260301120000||ADT^A01^ADT_A01|CTRL-0001|P|2.5.1",
            "EVN|A01|20260301120000",
            "PID|1||MRN-4711^^^HOSP^MR||Doe^Jane^Q||19800102|F",
            "PV1|1|I|WARD^101^1",
        ])
        ack = _mllp(mllp_port, msg)
        assert "MSA|AA|CTRL-0001" in ack
        deadline = time.monotonic() + 20
        while True:
            bundle = httpx.get(f"http://127.0.0.1:{port}/fhir/Patient", params={"family": "Doe"}).json()
            if bundle.get("total") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert bundle["total"] == 1
        assert bundle["entry"][0]["resource"]["birthDate"] == "1980-01-02"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
