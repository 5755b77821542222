"""``fhirtwin twin …`` as a user runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from support import FIXTURES, run

from fhirtwin.cli import main

UCUM = "http://unitsofmeasure.org"
SYNTHEA_PATIENT = "0e61c3ad-d11e-4080-a6aa-cac89cae4e37"  # never given vancomycin


def _dose_only_patient() -> list[dict]:
    """A patient given one vancomycin dose and never measured (no level to date the forecast from)."""
    subject = {"reference": "Patient/dose-only"}
    quantity = {"system": UCUM}
    return [
        {"resourceType": "Patient", "id": "dose-only", "gender": "male", "birthDate": "1960-01-01"},
        {"resourceType": "Observation", "id": "dose-only-weight", "status": "final", "subject": subject,
         "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
         "effectiveDateTime": "2026-03-01T06:00:00Z", "valueQuantity": {**quantity, "value": 80, "code": "kg", "unit": "kg"}},
        {"resourceType": "Observation", "id": "dose-only-creatinine", "status": "final", "subject": subject,
         "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]}, "effectiveDateTime": "2026-03-01T06:00:00Z",
         "valueQuantity": {**quantity, "value": 1.0, "code": "mg/dL", "unit": "mg/dL"}},
        {"resourceType": "MedicationAdministration", "id": "dose-only-dose", "status": "completed", "subject": subject,
         "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                   "code": "11124", "display": "vancomycin"}]},
         "effectivePeriod": {"start": "2026-03-01T08:00:00Z", "end": "2026-03-01T09:00:00Z"},
         "dosage": {"dose": {**quantity, "value": 1000, "code": "mg", "unit": "mg"}}},
    ]


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


Cli = Callable[..., Ran]


@pytest.fixture
def fhirtwin(capsys: pytest.CaptureFixture[str]) -> Cli:
    """The command line in this process (the console script's own ``main``): the parser and dispatch
    ``run`` reaches through a new interpreter, without paying its start-up for every case."""
    def call(*args: str) -> Ran:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse refuses bad arguments this way
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)
    return call


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("twin")
    path, extra = folder / "t.duckdb", folder / "dose-only.ndjson"
    extra.write_bytes(b"\n".join(orjson.dumps(r) for r in _dose_only_patient()) + b"\n")
    assert run("ingest", "--db", str(path), str(FIXTURES / "tdm" / "fhir"), str(extra),
               str(FIXTURES / "synthea" / "ndjson" / "Patient.ndjson")).returncode == 0
    return path


def test_fit_publishes_and_list_shows_it(db: Path) -> None:
    out = run("twin", "fit", "--db", str(db), "--patient", "tdm-002", "--model", "vancomycin")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "CarePlan" in out.stdout and "AUC24" in out.stdout
    listing = run("twin", "list", "--db", str(db))
    assert "tdm-002 vancomycin fresh" in listing.stdout


def test_simulate_writes_the_bundle(fhirtwin: Cli, db: Path, tmp_path: Path) -> None:
    target = tmp_path / "sim.json"
    out = fhirtwin("twin", "simulate", "--db", str(db), "--patient", "tdm-001", "--model", "vancomycin",
              "--horizon", "24h", "--out", str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    bundle = orjson.loads(target.read_bytes())
    assert len(bundle["entry"]) == 25


def test_missing_data_is_a_clear_cli_error(fhirtwin: Cli, db: Path) -> None:
    out = fhirtwin("twin", "simulate", "--db", str(db), "--patient", "tdm-001", "--model", "glucose")
    assert out.returncode == 2
    assert "glucose readings" in out.stdout


def test_validate_vancomycin_writes_a_report(fhirtwin: Cli, db: Path, tmp_path: Path) -> None:
    out = fhirtwin("twin", "validate", "--db", str(db), "--model", "vancomycin", "--virtual", "10", "--out",
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
def test_bad_arguments_are_one_line_errors(fhirtwin: Cli, db: Path, args: list[str], needle: str) -> None:
    out = fhirtwin("twin", args[0], "--db", str(db), *args[1:])
    assert out.returncode == 2
    assert needle in (out.stdout + out.stderr).replace("\n", " ")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", [["twin", "list"], ["export", "--format", "ndjson", "--out", "x"],
                                     ["view", "run", "glucose_readings"], ["replay"]])
def test_a_mistyped_database_is_said_and_not_created(fhirtwin: Cli, tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "typo.duckdb"
    out = fhirtwin(*command, "--db", str(missing))
    assert out.returncode == 2 and f"no such database: {missing}" in out.stdout.replace("\n", "")
    assert not missing.exists()


def test_a_scenario_file_that_is_no_r4_parameters_is_a_located_error(
        fhirtwin: Cli, db: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text('{"resourceType": "Parameters", "parameter": [{"name": "scenario", "part": [{"name": "dose", '
                        '"part": [{"name": "time", "valueDateTime": {"value": "a"}}]}]}]}')
    out = fhirtwin("twin", "simulate", "--db", str(db), "--patient", "tdm-001", "--model", "vancomycin",
              "--scenario", str(scenario))
    assert out.returncode == 2 and "not a valid R4 Parameters resource" in out.stdout.replace("\n", " ")
    assert "Traceback" not in out.stderr


SCENARIO = {"resourceType": "Parameters", "parameter": [
    {"name": "origin", "valueDateTime": "2026-03-02T23:00:00Z"},
    {"name": "horizon", "valueQuantity": {"value": 6, "unit": "h", "system": "http://unitsofmeasure.org", "code": "h"}},
    {"name": "scenario", "part": [{"name": "dose", "part": [
        {"name": "time", "valueDateTime": "2026-03-03T02:00:00Z"},
        {"name": "amount", "valueQuantity": {"value": 1000, "unit": "mg", "system": "http://unitsofmeasure.org",
                                             "code": "mg"}}]}]}]}


def test_simulate_honours_the_scenario_files_origin_and_horizon(fhirtwin: Cli, db: Path, tmp_path: Path) -> None:
    scenario, target = tmp_path / "scenario.json", tmp_path / "sim.json"
    scenario.write_bytes(orjson.dumps(SCENARIO))
    out = fhirtwin("twin", "simulate", "--db", str(db), "--patient", "tdm-001", "--model", "vancomycin",
              "--scenario", str(scenario), "--out", str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    predicted = [e["resource"] for e in orjson.loads(target.read_bytes())["entry"][1:]]
    assert len(predicted) == 6
    assert predicted[0]["effectiveDateTime"].startswith("2026-03-03T00:00")


@pytest.mark.parametrize(("flags", "needle"), [
    (["--origin", "2026-03-02T22:00:00Z"], "has origin 2026-03-02T23:00:00+00:00 but --origin is"),
    (["--horizon", "12h"], "has horizon 360 min but --horizon is 12h"),
    (["--model", "vancomycin-buelga-2005"], "is for model 'vancomycin' but --model is 'vancomycin-buelga-2005'"),
])
def test_a_flag_that_contradicts_the_scenario_file_is_a_one_line_error(
        fhirtwin: Cli, db: Path, tmp_path: Path, flags: list[str], needle: str) -> None:
    scenario = tmp_path / "scenario.json"
    body = {**SCENARIO, "parameter": [{"name": "model", "valueString": "vancomycin"}, *SCENARIO["parameter"]]}
    scenario.write_bytes(orjson.dumps(body))
    args = ["--model", "vancomycin", *flags] if flags[0] != "--model" else flags
    out = fhirtwin("twin", "simulate", "--db", str(db), "--patient", "tdm-001", *args, "--scenario", str(scenario))
    assert out.returncode == 2
    assert needle in out.stdout.replace("\n", "")
    assert "Traceback" not in out.stderr


def test_simulate_defaults_to_the_latest_vancomycin_data(fhirtwin: Cli, db: Path, tmp_path: Path) -> None:
    """Without --origin the CLI forecasts from the latest dose or level (here the only dose), not from the
    wall clock."""
    target = tmp_path / "sim.json"
    out = fhirtwin("twin", "simulate", "--db", str(db), "--patient", "dose-only", "--model", "vancomycin",
              "--horizon", "2h", "--out", str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    fitted = orjson.loads(target.read_bytes())["entry"][0]["resource"]
    assert fitted["effectiveDateTime"].startswith("2026-03-01T08:00")


def test_fit_publishes_no_vancomycin_forecast_for_a_patient_never_given_it(fhirtwin: Cli, db: Path) -> None:
    out = fhirtwin("twin", "fit", "--db", str(db), "--patient", SYNTHEA_PATIENT, "--model", "vancomycin")
    assert out.returncode == 2
    assert "no vancomycin doses or levels" in out.stdout.replace("\n", "")
