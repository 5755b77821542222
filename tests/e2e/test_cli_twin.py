"""``fhirtwin twin …`` as a user runs it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from support import FIXTURES, run


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("twin") / "t.duckdb"
    assert run("ingest", "--db", str(path), str(FIXTURES / "tdm" / "fhir")).returncode == 0
    return path


def test_fit_publishes_and_list_shows_it(db: Path) -> None:
    out = run("twin", "fit", "--db", str(db), "--patient", "tdm-002", "--model", "vancomycin")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CarePlan" in out.stdout and "AUC24" in out.stdout
    listing = run("twin", "list", "--db", str(db))
    assert "tdm-002 vancomycin fresh" in listing.stdout


def test_simulate_writes_the_bundle(db: Path, tmp_path: Path) -> None:
    target = tmp_path / "sim.json"
    out = run("twin", "simulate", "--db", str(db), "--patient", "tdm-001", "--model", "vancomycin",
              "--horizon", "24h", "--out", str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    bundle = orjson.loads(target.read_bytes())
    assert len(bundle["entry"]) == 25


def test_missing_data_is_a_clear_cli_error(db: Path) -> None:
    out = run("twin", "simulate", "--db", str(db), "--patient", "tdm-001", "--model", "glucose")
    assert out.returncode == 2
    assert "glucose readings" in out.stdout


def test_validate_vancomycin_writes_a_report(db: Path, tmp_path: Path) -> None:
    out = run("twin", "validate", "--db", str(db), "--model", "vancomycin", "--virtual", "40", "--out",
              str(tmp_path / "report"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "report.html").exists()
    assert list((tmp_path / "report").glob("*.png"))


@pytest.mark.parametrize(("args", "needle"), [
    (["simulate", "--patient", "tdm-001", "--model", "vancomycin", "--origin", "garbage"],
     "--origin 'garbage': expected an ISO 8601 date-time"),
    (["simulate", "--patient", "tdm-001", "--model", "vancomycin", "--scenario", "/no/such/scenario.json"],
     "--scenario /no/such/scenario.json"),
    (["validate", "--model", "vancomycin", "--virtual", "0", "--out", "/tmp/never"], "expected at least 1, got 0"),
])
def test_bad_arguments_are_one_line_errors(db: Path, args: list[str], needle: str) -> None:
    out = run("twin", args[0], "--db", str(db), *args[1:])
    assert out.returncode == 2
    assert needle in (out.stdout + out.stderr).replace("\n", " ")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", [["twin", "list"], ["export", "--format", "ndjson", "--out", "x"],
                                     ["view", "run", "glucose_readings"], ["replay"]])
def test_a_mistyped_database_is_said_and_not_created(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "typo.duckdb"
    out = run(*command, "--db", str(missing))
    assert out.returncode == 2 and f"no such database: {missing}" in out.stdout.replace("\n", "")
    assert not missing.exists()


def test_a_scenario_file_that_is_no_r4_parameters_is_a_located_error(db: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text('{"resourceType": "Parameters", "parameter": [{"name": "scenario", "part": [{"name": "dose", '
                        '"part": [{"name": "time", "valueDateTime": {"value": "a"}}]}]}]}')
    out = run("twin", "simulate", "--db", str(db), "--patient", "tdm-001", "--model", "vancomycin",
              "--scenario", str(scenario))
    assert out.returncode == 2 and "not a valid R4 Parameters resource" in out.stdout.replace("\n", " ")
    assert "Traceback" not in out.stderr
