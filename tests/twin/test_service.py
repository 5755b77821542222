"""Twins over the store: scenarios, point-in-time fits, published FHIR, refits on new data."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import numpy as np
import pytest
from support import FIXTURES

from ingest.pipeline import Ingestor
from mapping.validation import validate_resource
from store.store import Store
from twin.inputs import MissingData, latest_vancomycin_time, view_rows
from twin.scenario import ScenarioError, parse_request
from twin.service import TwinRefresher, TwinRegistry, publish, simulate, simulation_bundle

GLUCOSE_PATIENT = "sim-adult-001"
VANCO_PATIENT = "tdm-001"
UCUM = "http://unitsofmeasure.org"


def params(model: str, origin: str, horizon: tuple[float, str] | None = None, events: list | None = None) -> dict:
    out = [{"name": "model", "valueString": model}, {"name": "origin", "valueDateTime": origin}]
    if horizon:
        out.append({"name": "horizon", "valueQuantity": {"value": horizon[0], "unit": horizon[1], "system": UCUM,
                                                          "code": horizon[1]}})
    if events:
        out.append({"name": "scenario", "part": events})
    return {"resourceType": "Parameters", "parameter": out}


def carbs(time: str, grams: float) -> dict:
    return {"name": "carbs", "part": [{"name": "time", "valueDateTime": time},
                                      {"name": "amount", "valueQuantity": {"value": grams, "unit": "g", "code": "g"}}]}


def dose(time: str, mg: float, minutes: float = 60) -> dict:
    return {"name": "dose", "part": [
        {"name": "time", "valueDateTime": time},
        {"name": "amount", "valueQuantity": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}},
        {"name": "infusion", "valueDuration": {"value": minutes, "unit": "min", "system": UCUM, "code": "min"}}]}


@pytest.fixture(scope="module")
def store() -> Store:
    s = Store(":memory:")
    Ingestor(s).ingest_paths([FIXTURES / "cgm" / "fhir", FIXTURES / "tdm" / "fhir"])
    yield s
    s.close()


def predictions(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle["entry"][1:]]


def test_glucose_scenario_changes_the_forecast_and_nothing_is_stored(store: Store) -> None:
    before = store.count("Observation")
    origin = "2026-01-07T12:00:00Z"
    base = simulation_bundle(simulate(store, GLUCOSE_PATIENT, parse_request(params("glucose", origin))))
    meal = simulation_bundle(simulate(store, GLUCOSE_PATIENT, parse_request(
        params("glucose", origin, (2, "h"), [carbs("2026-01-07T12:05:00Z", 80)]))))
    assert store.count("Observation") == before
    assert base["type"] == "collection" and len(predictions(base)) == 24  # every 5 min for 2 h
    fitted = base["entry"][0]["resource"]
    assert fitted["code"]["coding"][0]["code"] == "fitted-parameters"
    assert {c["code"]["text"] for c in fitted["component"]} >= {"si_ml_per_uu_min", "vg_dl"}
    b_vals = np.array([o["valueQuantity"]["value"] for o in predictions(base)])
    m_vals = np.array([o["valueQuantity"]["value"] for o in predictions(meal)])
    assert m_vals[-1] > b_vals[-1] + 20  # 80 g of carbohydrate raises glucose within 2 h
    for obs in predictions(meal):
        assert obs["status"] == "preliminary"
        assert obs["code"]["coding"][0]["code"] == "99504-3" and obs["valueQuantity"]["code"] == "mg/dL"
        assert any(t["code"] == "simulated" for t in obs["meta"]["tag"])
        ranges = {c["code"]["text"]: c["valueRange"] for c in obs["component"]}
        lo80, hi80 = ranges["80% prediction interval"]["low"]["value"], ranges["80% prediction interval"]["high"]["value"]
        lo95, hi95 = ranges["95% prediction interval"]["low"]["value"], ranges["95% prediction interval"]["high"]["value"]
        assert lo95 <= lo80 <= obs["valueQuantity"]["value"] <= hi80 <= hi95
        assert obs["derivedFrom"] == [{"reference": meal["entry"][0]["fullUrl"]}]  # resolves in the Bundle
    for entry in base["entry"]:
        assert validate_resource(entry["resource"]) == []


def test_fit_sees_only_data_up_to_the_origin(store: Store) -> None:
    origin = "2026-01-07T08:00:00Z"
    first = simulate(store, GLUCOSE_PATIENT, parse_request(params("glucose", origin)))
    later = simulate(store, GLUCOSE_PATIENT, parse_request(params("glucose", "2026-01-07T09:00:00Z")))
    assert first.inputs.fingerprint != later.inputs.fingerprint
    cutoff = datetime(2026, 1, 7, 8, tzinfo=UTC)
    for ref in first.inputs.references:
        rtype, rid = ref.split("/")
        res = store.read(rtype, rid)
        when = res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start")
        if when:
            assert datetime.fromisoformat(when.replace("Z", "+00:00")) <= cutoff


def test_vancomycin_dose_scenario(store: Store) -> None:
    origin = "2026-03-02T23:00:00Z"
    base = simulation_bundle(simulate(store, VANCO_PATIENT, parse_request(params("vancomycin", origin, (48, "h")))))
    more = simulation_bundle(simulate(store, VANCO_PATIENT, parse_request(
        params("vancomycin", origin, (48, "h"), [dose("2026-03-03T08:00:00Z", 1250)]))))
    assert len(predictions(base)) == 48
    times = [o["effectiveDateTime"] for o in predictions(base)]
    b = {t: o["valueQuantity"]["value"] for t, o in zip(times, predictions(base), strict=True)}
    m = {o["effectiveDateTime"]: o["valueQuantity"]["value"] for o in predictions(more)}
    before_dose = [t for t in times if t < "2026-03-03T08"]
    after_dose = [t for t in times if t >= "2026-03-03T10"]
    assert all(abs(m[t] - b[t]) < 1e-6 for t in before_dose)
    assert all(m[t] > b[t] for t in after_dose)
    assert predictions(base)[0]["code"]["coding"][0]["code"] == "20578-1"


def test_publish_then_new_data_marks_stale_and_refit_replaces(store: Store) -> None:
    refresher = TwinRefresher(store)
    written = publish(store, VANCO_PATIENT, "vancomycin")
    kinds = {w.resource_type for w in written}
    assert {"Observation", "CarePlan", "Provenance", "Device"} <= kinds
    plan_id = next(w.id for w in written if w.resource_type == "CarePlan")
    plan = store.read("CarePlan", plan_id)
    assert plan["intent"] == "proposal" and "AUC24" in plan["description"]
    assert plan["activity"][0]["detail"]["quantity"]["code"] == "mg"
    for w in written:
        assert validate_resource(store.read(w.resource_type, w.id)) == []
    prov = store.read("Provenance", next(w.id for w in written if w.resource_type == "Provenance"))
    assert {e["what"]["reference"] for e in prov["entity"]} >= {f"Observation/{VANCO_PATIENT}-level-4092-3"}
    (row,) = [r for r in TwinRegistry.rows(store) if r["patient_id"] == VANCO_PATIENT]
    assert not row["stale"]

    level = copy.deepcopy(store.read("Observation", f"{VANCO_PATIENT}-level-4090-7"))
    level.pop("meta")
    level["id"] = f"{VANCO_PATIENT}-level-extra"
    level["effectiveDateTime"] = "2026-03-02T22:00:00Z"
    level["valueQuantity"]["value"] = 21.0
    store.write([level])
    (row,) = [r for r in TwinRegistry.rows(store) if r["patient_id"] == VANCO_PATIENT]
    assert row["stale"]
    assert refresher.refresh_once() == 1
    (after,) = [r for r in TwinRegistry.rows(store) if r["patient_id"] == VANCO_PATIENT]
    assert not after["stale"] and after["fingerprint"] != row["fingerprint"]
    assert store.current("CarePlan", plan_id).version_id == 2
    assert refresher.refresh_once() == 0  # publishing did not make the twin stale again

    store.delete("Observation", f"{VANCO_PATIENT}-level-extra")  # a deletion changes the data too
    (row,) = [r for r in TwinRegistry.rows(store) if r["patient_id"] == VANCO_PATIENT]
    assert row["stale"]
    assert refresher.refresh_once() == 1


def test_missing_data_is_explained(store: Store) -> None:
    with pytest.raises(MissingData, match="creatinine|weight"):
        simulate(store, GLUCOSE_PATIENT, parse_request(params("vancomycin", "2026-01-10T00:00:00Z")))


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"resourceType": "Parameters", "parameter": []}, "Parameters.parameter"),
        (params("glucose", "2026-01-10T00:00:00Z", (2, "weeks")), "Parameters.parameter[2].value.code"),
        (params("glucose", "2026-01-10T00:00:00Z", None, [{"name": "walk", "part": [
            {"name": "time", "valueDateTime": "2026-01-10T00:00:00Z"}]}]), "Parameters.parameter[2].part[0].name"),
        ({"resourceType": "Patient"}, "Parameters"),
        (params("vancomycin", "2026-01-10T00:00:00Z", None, [dose("2026-01-10T01:00:00Z", -500)]),
         "Parameters.parameter[2].part[0].part[1].value.value"),  # a negative dose
        (params("vancomycin", "2026-01-10T00:00:00Z", None, [dose("2026-01-10T01:00:00Z", 1e308)]),
         "Parameters.parameter[2].part[0].part[1].value.value"),  # overflows the model: nulls in the forecast
        (params("glucose", "2026-01-10T00:00:00Z", None, [carbs("2026-01-10T01:00:00Z", float("nan"))]),
         "Parameters.parameter[2].part[0].part[1].valueQuantity.value"),  # no R4 decimal: the validator's path
        (params("vancomycin", "2026-01-10T00:00:00Z", (31, "d")), "Parameters.parameter[2].value"),
        (params("vancomycin", "2026-01-10T00:00:00Z", None, [{"name": "dose", "part": [
            {"name": "time", "valueDateTime": {"value": "a"}}]}]),
         "Parameters.parameter[2].part[0].part[0].valueDateTime"),  # not R4: refused before it is read
        (params("vancomycin", "2026-01-10T00:00:00Z", (1e308, "h")), "Parameters.parameter[2].value.value"),
    ],
)
def test_malformed_requests_point_at_the_problem(body: dict, where: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_request(body)
    assert err.value.expression == where


@contextmanager
def written(store: Store, resource: dict) -> Iterator[None]:
    """``resource`` in the store for the duration of the block (the shared store stays as ingested)."""
    store.write([resource])
    try:
        yield
    finally:
        store.delete(resource["resourceType"], resource["id"])


QUICK_ORIGIN = "2026-01-07T12:00:00Z"  # two days of CGM: a fit of a second


@pytest.mark.parametrize("glucose_mg_dl", [0, 1e308])
def test_an_implausible_reading_is_left_out_of_the_fit(store: Store, glucose_mg_dl: float) -> None:
    """A 0 or 10^308 mg/dL reading just before the origin drove the forecast to NaN (nulls in the
    answer): it is no measurement, so the twin fits and forecasts as if it had not come."""
    clean = simulate(store, GLUCOSE_PATIENT, parse_request(params("glucose", QUICK_ORIGIN)))
    reading = next(r for r in (store.read("Observation", ref.split("/")[1]) for ref in clean.inputs.references
                               if ref.startswith("Observation/")) if r and "valueQuantity" in r)
    bad = {**reading, "id": "implausible", "effectiveDateTime": "2026-01-07T11:59:00Z",
           "valueQuantity": {**reading["valueQuantity"], "value": glucose_mg_dl}}
    bad.pop("meta", None)
    with written(store, bad):
        result = simulate(store, GLUCOSE_PATIENT, parse_request(params("glucose", QUICK_ORIGIN)))
    assert "Observation/implausible" not in result.inputs.references
    values = [o["valueQuantity"]["value"] for o in predictions(simulation_bundle(result))]
    assert values == [o["valueQuantity"]["value"] for o in predictions(simulation_bundle(clean))]
    assert all(isinstance(v, float) and 10 < v < 600 for v in values)


@pytest.mark.parametrize(("loinc", "value"), [("29463-7", 0.0), ("29463-7", 1e308), ("2160-0", -1.0)])
def test_an_implausible_covariate_is_left_out_and_the_latest_plausible_one_used(loinc: str, value: float) -> None:
    """A weight of 0 kg or a creatinine of -1 mg/dL failed the vancomycin fit (500 from $simulate)."""
    origin = "2026-03-02T14:00:00Z"
    with Store(":memory:") as s:
        Ingestor(s).ingest_paths([FIXTURES / "tdm" / "fhir"])
        clean = simulate(s, VANCO_PATIENT, parse_request(params("vancomycin", origin)))
        used = [s.read("Observation", ref.split("/")[1]) for ref in clean.inputs.references
                if ref.startswith("Observation/")]
        real = next(o for o in used if o["code"]["coding"][0]["code"] == loinc)
        bad = {**real, "id": "implausible", "valueQuantity": {**real["valueQuantity"], "value": value}}
        bad.pop("meta", None)
        s.write([bad])  # same time as the real one, written later
        result = simulate(s, VANCO_PATIENT, parse_request(params("vancomycin", origin)))
    assert "Observation/implausible" not in result.inputs.references
    assert f"Observation/{real['id']}" in result.inputs.references
    assert [o["valueQuantity"]["value"] for o in predictions(simulation_bundle(result))] == \
        [o["valueQuantity"]["value"] for o in predictions(simulation_bundle(clean))]


def test_a_negative_carbohydrate_intake_is_left_out_of_the_fit(store: Store) -> None:
    clean = simulate(store, GLUCOSE_PATIENT, parse_request(params("glucose", QUICK_ORIGIN)))
    meal = next(o for o in (store.read("Observation", ref.split("/")[1]) for ref in clean.inputs.references
                            if ref.startswith("Observation/")) if o["code"]["coding"][0]["code"] == "9059-7")
    bad = {**meal, "id": "negative-meal", "valueQuantity": {**meal["valueQuantity"], "value": -80}}
    bad.pop("meta", None)
    with written(store, bad):
        result = simulate(store, GLUCOSE_PATIENT, parse_request(params("glucose", QUICK_ORIGIN)))
    assert "Observation/negative-meal" not in result.inputs.references
    assert result.inputs.references == clean.inputs.references


def test_a_forecast_that_is_not_a_number_is_refused_not_published() -> None:
    """Whatever drives a model to NaN or infinity, no null forecast reaches a clinician: the fit says so
    (MissingData: 422 from $simulate, the refresher records it as the twin's error)."""
    from twin.models.base import Prediction
    from twin.service import _finite

    ok = np.array([90.0, 95.0])
    good = Prediction(np.array([5.0, 10.0]), ok, ok - 10, ok + 10, ok - 20, ok + 20, "glucose-x", "1", "fp")
    assert _finite(good, "p1") is good
    for broken in (np.array([90.0, np.nan]), np.array([np.inf, 95.0])):
        bad = Prediction(good.t, broken, ok - 10, ok + 10, ok - 20, ok + 20, "glucose-x", "1", "fp")
        with pytest.raises(MissingData, match="glucose-x twin gave no finite forecast for Patient/p1"):
            _finite(bad, "p1")


@pytest.mark.parametrize(("patient", "model", "view"), [(VANCO_PATIENT, "vancomycin", "drug_levels"),
                                                         (GLUCOSE_PATIENT, "glucose", "glucose_readings")])
def test_published_forecasts_are_not_read_back_as_measurements(store: Store, patient: str, model: str,
                                                                view: str) -> None:
    """A forecast has the measured code: read back as data, each publish moved the next one's origin."""
    rows = len(view_rows(store, view, patient))
    first = publish(store, patient, model)
    second = publish(store, patient, model)
    assert len(view_rows(store, view, patient)) == rows
    forecast = {w.id: w for w in first if w.resource_type == "Observation"}
    assert forecast and {w.id for w in second if w.resource_type == "Observation"} == set(forecast)


def test_a_creatinine_after_the_last_level_moves_the_vancomycin_origin(store: Store) -> None:
    """The published fit starts at the latest data it reads, covariates included."""
    last = latest_vancomycin_time(store, VANCO_PATIENT, datetime.now(UTC))
    creatinine = next(r for r in view_rows(store, "creatinine", VANCO_PATIENT))
    later = {"resourceType": "Observation", "id": "creatinine-after-levels", "status": "final",
             "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
             "subject": {"reference": f"Patient/{VANCO_PATIENT}"}, "effectiveDateTime": "2026-03-04T06:00:00Z",
             "valueQuantity": {"value": 4.5, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}}
    assert creatinine and last is not None and last < datetime(2026, 3, 4, 6, tzinfo=UTC)
    with written(store, later):
        assert latest_vancomycin_time(store, VANCO_PATIENT, datetime.now(UTC)) == datetime(2026, 3, 4, 6, tzinfo=UTC)
