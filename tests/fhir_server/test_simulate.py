"""``POST /fhir/Patient/{id}/$simulate`` over HTTP, with the contract's own example request."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fhirclient.models.bundle import Bundle
from fhirclient.models.observation import Observation
from fhirclient.models.operationdefinition import OperationDefinition
from support import FIXTURES, live_server

from fhir_server.app import create_app
from ingest.pipeline import Ingestor
from mapping.validation import validate_resource
from store.store import Store
from twin.inputs import MissingData
from twin.scenario import EVENT_PARTS, PARAMETERS
from twin.service import publish

UCUM = "http://unitsofmeasure.org"
# The request documented in DESIGN.md, verbatim apart from the patient it is posted for.
DESIGN_EXAMPLE = {"resourceType": "Parameters", "parameter": [
    {"name": "model", "valueString": "vancomycin"},
    {"name": "origin", "valueDateTime": "2026-03-02T14:00:00Z"},
    {"name": "horizon", "valueQuantity": {"value": 48, "unit": "h", "system": UCUM, "code": "h"}},
    {"name": "scenario", "part": [
        {"name": "dose", "part": [
            {"name": "time", "valueDateTime": "2026-03-02T20:00:00Z"},
            {"name": "amount", "valueQuantity": {"value": 1250, "unit": "mg", "system": UCUM, "code": "mg"}},
            {"name": "infusion", "valueDuration": {"value": 60, "unit": "min", "system": UCUM, "code": "min"}}]}]}]}


SYNTHEA_PATIENT = "0e61c3ad-d11e-4080-a6aa-cac89cae4e37"  # never given vancomycin
GLUCOSE_START = datetime(2026, 1, 10, tzinfo=UTC)


def q(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def request(model: str, origin: str | None, horizon: dict | None = None, *events: dict, **extra: dict) -> dict:
    params = [{"name": "model", "valueString": model}]
    if origin:
        params.append({"name": "origin", "valueDateTime": origin})
    if horizon:
        params.append({"name": "horizon", "valueQuantity": horizon})
    if events:
        params.append({"name": "scenario", "part": list(events)})
    return {"resourceType": "Parameters", "parameter": params + list(extra.values())}


def event(kind: str, time: str, **parts: dict) -> dict:
    sub = [{"name": "time", "valueDateTime": time}]
    for name, value in parts.items():
        sub.append({"name": name, "valueDuration" if name in ("infusion", "duration") else "valueQuantity": value})
    return {"name": kind, "part": sub}


def glucose_patient(patient_id: str, loinc: str, unit: str, level: str = "wave") -> list[dict]:
    """A day of glucose readings every 15 min (a slow wave, a fall toward 70 or a rise to 260 mg/dL) in one
    code and unit."""
    shape = {"wave": lambda i: 140 + 40 * math.sin(i / 8), "low": lambda i: 90 - 20 * i / 95,
             "high": lambda i: 160 + 100 * i / 95}[level]
    out: list[dict] = [{"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1980-01-01"}]
    for i in range(96):
        mg_dl = shape(i)
        value = round(mg_dl / 18.016, 3) if unit == "mmol/L" else mg_dl
        out.append({"resourceType": "Observation", "id": f"{patient_id}-g{i}", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "effectiveDateTime": (GLUCOSE_START + timedelta(minutes=15 * i)).isoformat(),
                    "valueQuantity": q(value, unit)})
    return out


@pytest.fixture(scope="module")
def served() -> tuple[Store, str]:
    store = Store(":memory:")
    Ingestor(store).ingest_paths([FIXTURES / "tdm" / "fhir", FIXTURES / "synthea" / "ndjson" / "Patient.ndjson"])
    store.write(glucose_patient("glu-mgdl", "2339-0", "mg/dL") + glucose_patient("glu-mmol", "15074-8", "mmol/L")
                + glucose_patient("glu-low", "2339-0", "mg/dL", "low")
                + glucose_patient("glu-high", "2339-0", "mg/dL", "high"))
    with live_server(create_app(store)) as url:
        yield store, url
    store.close()


@pytest.fixture(scope="module")
def base(served: tuple[Store, str]) -> str:
    return served[1]


def post(base: str, body: dict, patient: str = "tdm-001") -> httpx.Response:
    return httpx.post(f"{base}/Patient/{patient}/$simulate", json=body, timeout=60)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def values(bundle: dict) -> dict[datetime, float]:
    return {instant(e["resource"]["effectiveDateTime"]): e["resource"]["valueQuantity"]["value"]
            for e in bundle["entry"][1:]}


def test_design_example_returns_a_strict_r4_bundle(base: str) -> None:
    resp = httpx.post(f"{base}/Patient/tdm-001/$simulate", json=DESIGN_EXAMPLE,
                      headers={"Content-Type": "application/fhir+json"}, timeout=60)
    assert resp.status_code == 200, resp.text
    bundle = Bundle(resp.json())  # fhirclient's models are strict: the whole answer must be valid R4
    assert bundle.type == "collection"
    obs = [e.resource for e in bundle.entry if isinstance(e.resource, Observation)]
    predicted = [o for o in obs if o.code.coding[0].code == "20578-1"]
    assert len(predicted) == 48
    assert all(o.status == "preliminary" and o.valueQuantity.code == "mg/L" for o in predicted)
    assert {c.code.text for c in predicted[0].component} == {"80% prediction interval", "95% prediction interval"}
    fitted = next(o for o in obs if o.code.coding[0].code == "fitted-parameters")
    assert {c.code.text for c in fitted.component} == {"cl_l_h", "vc_l", "vp_l"}
    # Nothing was stored by the simulation.
    assert httpx.get(f"{base}/Observation", params={"code": "20578-1", "_summary": "count"}).json()["total"] == 0


@pytest.mark.parametrize(
    ("patient", "body", "status", "needle"),
    [
        ("tdm-001", {"resourceType": "Parameters", "parameter": [{"name": "model", "valueString": "warfarin"}]},
         400, "unknown model"),
        ("tdm-001", {"resourceType": "Parameters", "parameter": [
            {"name": "model", "valueString": "vancomycin"},
            {"name": "horizon", "valueQuantity": {"value": 2, "unit": "fortnight", "code": "fortnight"}}]},
         400, "unit"),
        ("nobody", DESIGN_EXAMPLE, 404, "not found"),
        ("0e61c3ad-d11e-4080-a6aa-cac89cae4e37", DESIGN_EXAMPLE, 422, "lacks"),
    ],
)
def test_errors_are_operation_outcomes(base: str, patient: str, body: dict, status: int, needle: str) -> None:
    resp = httpx.post(f"{base}/Patient/{patient}/$simulate", json=body, timeout=60)
    assert resp.status_code == status
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert needle in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(("damage", "expression"), [
    (lambda b: b["parameter"][1].update(valueDateTime={"value": "a"}), "Parameters.parameter[1].valueDateTime"),
    (lambda b: b["parameter"][3]["part"][0]["part"].insert(0, None), "Parameters.parameter[3].part[0].part[0]"),
    (lambda b: b["parameter"][2]["valueQuantity"].update(value="48"), "Parameters.parameter[2].valueQuantity.value"),
])
def test_a_malformed_request_is_a_400_located_in_the_parameters(base: str, damage: Any, expression: str) -> None:
    body = copy.deepcopy(DESIGN_EXAMPLE)
    damage(body)
    resp = httpx.post(f"{base}/Patient/tdm-001/$simulate", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    assert expression in {e for issue in resp.json()["issue"] for e in issue.get("expression", [])}


def test_capability_statement_lists_simulate(base: str) -> None:
    cap = httpx.get(f"{base}/metadata").json()
    patient = next(r for r in cap["rest"][0]["resource"] if r["type"] == "Patient")
    assert "simulate" in {op["name"] for op in patient.get("operation", [])}


VANCO_ORIGIN = "2026-03-02T23:00:00Z"


def test_an_intravenous_push_is_a_bolus_not_nothing(base: str) -> None:
    """An infusion of 0 min is a push: it raises the level at once, like a 1-minute infusion (it used to
    vanish from the simulation: the 09:00 level was the level without the dose)."""
    def at_nine(*events: dict) -> float:
        resp = post(base, request("vancomycin", VANCO_ORIGIN, q(12, "h"), *events))
        assert resp.status_code == 200, resp.text
        return values(resp.json())[datetime(2026, 3, 3, 9, tzinfo=UTC)]

    none = at_nine()
    push = at_nine(event("dose", "2026-03-03T08:00:00Z", amount=q(1250, "mg"), infusion=q(0, "min")))
    minute = at_nine(event("dose", "2026-03-03T08:00:00Z", amount=q(1250, "mg"), infusion=q(1, "min")))
    assert push > none + 5
    assert push == pytest.approx(minute, rel=0.02)


def test_each_simulation_has_its_own_ids_and_the_same_request_the_same_ids(base: str) -> None:
    def ids(body: dict) -> list[str]:
        resp = post(base, body)
        assert resp.status_code == 200, resp.text
        entries = resp.json()["entry"]
        assert [e["fullUrl"] for e in entries] != [] and len({e["fullUrl"] for e in entries}) == len(entries)
        return [e["resource"]["id"] for e in entries] + [e["fullUrl"] for e in entries]

    dose = event("dose", "2026-03-03T08:00:00Z", amount=q(1250, "mg"), infusion=q(60, "min"))
    first = ids(request("vancomycin", VANCO_ORIGIN, q(6, "h"), dose))
    assert ids(request("vancomycin", VANCO_ORIGIN, q(6, "h"), dose)) == first
    for other in (request("vancomycin", VANCO_ORIGIN, q(6, "h")),
                  request("vancomycin", VANCO_ORIGIN, q(7, "h"), dose),
                  request("vancomycin", "2026-03-02T23:30:00Z", q(6, "h"), dose),
                  request("vancomycin", VANCO_ORIGIN, q(6, "h"),
                          event("dose", "2026-03-03T08:00:00Z", amount=q(1000, "mg"), infusion=q(60, "min")))):
        assert not set(ids(other)) & set(first)


def test_predictions_cite_the_fitted_parameters_by_their_full_url_in_the_bundle(base: str) -> None:
    bundle = post(base, request("vancomycin", VANCO_ORIGIN, q(3, "h"))).json()
    fitted_url = bundle["entry"][0]["fullUrl"]
    assert bundle["entry"][0]["resource"]["code"]["coding"][0]["code"] == "fitted-parameters"
    assert fitted_url.startswith("urn:uuid:")
    for entry in bundle["entry"][1:]:
        assert entry["resource"]["derivedFrom"] == [{"reference": fitted_url}]
    for entry in bundle["entry"]:  # the model's Device is on the server only once a twin is published
        assert "reference" not in entry["resource"]["device"]
        assert entry["resource"]["device"]["identifier"]["value"].startswith("vancomycin")


def test_a_scenario_event_before_the_origin_adds_to_the_record(base: str) -> None:
    """DESIGN: scenario events add to what the store holds up to the origin (a dose given, not yet
    charted); only the origin limits what is read from the store."""
    def levels(*events: dict) -> list[float]:
        bundle = post(base, request("vancomycin", VANCO_ORIGIN, q(6, "h"), *events)).json()
        return [e["resource"]["valueQuantity"]["value"] for e in bundle["entry"][1:]]

    plain = levels()
    charted_late = levels(event("dose", "2026-03-02T21:00:00Z", amount=q(1000, "mg"), infusion=q(60, "min")))
    assert all(a > b for a, b in zip(charted_late, plain, strict=True))


LATE = "2026-03-03T08:00:00Z"


@pytest.mark.parametrize(("body", "expression", "needle"), [
    (request("vancomycin", VANCO_ORIGIN, None, event("carbs", LATE, amount=q(50, "g"))),
     "Parameters.parameter[2].part[0].name", "not carbs"),
    (request("glucose", VANCO_ORIGIN, None, event("dose", LATE, amount=q(1250, "mg"))),
     "Parameters.parameter[2].part[0].name", "not dose"),
    (request("vancomycin", VANCO_ORIGIN, None, {"name": "dose", "part": [
        {"name": "time", "valueDateTime": LATE}, {"name": "amount", "valueQuantity": q(1250, "mg")},
        {"name": "route", "valueString": "po"}]}), "Parameters.parameter[2].part[0].part[2].name", "route"),
    (request("glucose", VANCO_ORIGIN, None, event("insulin", LATE, amount=q(2, "U"), rate=q(1, "U/h"),
                                                  duration=q(60, "min"))),
     "Parameters.parameter[2].part[0].part[2].name", "not both"),
    (request("vancomycin", VANCO_ORIGIN, None, {"name": "dose", "part": [
        {"name": "time", "valueDateTime": LATE}, {"name": "time", "valueDateTime": "2026-03-03T09:00:00Z"},
        {"name": "amount", "valueQuantity": q(1250, "mg")}]}), "Parameters.parameter[2].part[0].part[1].name",
     "one 'time'"),
    (request("vancomycin", VANCO_ORIGIN, second={"name": "model", "valueString": "glucose"}),
     "Parameters.parameter[2].name", "more than once"),
    (request("vancomycin", VANCO_ORIGIN, None, event("dose", LATE, amount={
        "value": 1250, "unit": "mg", "system": "http://snomed.info/sct", "code": "mg"})),
     "Parameters.parameter[2].part[0].part[1].value.system", "UCUM"),
    (request("vancomycin", VANCO_ORIGIN, None, event("dose", LATE, amount={**q(1250, "mg"), "comparator": "<"})),
     "Parameters.parameter[2].part[0].part[1].value.comparator", "comparator"),
    (request("vancomycin", VANCO_ORIGIN, extra={"name": "scenario", "valueString": "x"}),
     "Parameters.parameter[2]", "parts"),
    (request("glucose", "2026-01-10T12:00:00Z", q(3, "h")), "Parameters.parameter[2].value", "at most 120"),
])
def test_inputs_that_do_not_apply_are_refused_where_they_are(base: str, body: dict, expression: str,
                                                             needle: str) -> None:
    resp = post(base, body)
    assert resp.status_code == 400, resp.text
    issue = resp.json()["issue"][0]
    assert issue["expression"] == [expression]
    assert needle in issue["diagnostics"]


def test_glucose_is_predicted_in_the_code_and_unit_of_the_patients_readings(base: str) -> None:
    def answer(patient: str) -> dict:
        resp = post(base, request("glucose", "2026-01-10T23:45:00Z", q(30, "min")), patient)
        assert resp.status_code == 200, resp.text
        return resp.json()

    mmol, mg_dl = answer("glu-mmol"), answer("glu-mgdl")
    for bundle, code, unit in ((mmol, "15074-8", "mmol/L"), (mg_dl, "2339-0", "mg/dL")):
        for entry in bundle["entry"][1:]:
            obs = entry["resource"]
            assert obs["code"]["coding"][0]["code"] == code
            assert obs["valueQuantity"]["code"] == unit
            assert {c["valueRange"]["low"]["code"] for c in obs["component"]} == {unit}
    for a, b in zip(mmol["entry"][1:], mg_dl["entry"][1:], strict=True):
        assert a["resource"]["valueQuantity"]["value"] * 18.016 == pytest.approx(
            b["resource"]["valueQuantity"]["value"], rel=2e-3)
        low_mmol = a["resource"]["component"][1]["valueRange"]["low"]["value"]
        assert low_mmol * 18.016 == pytest.approx(b["resource"]["component"][1]["valueRange"]["low"]["value"],
                                                  rel=2e-3)


def test_fitted_parameters_are_ucum_quantities_and_a_prior_only_fit_says_so(base: str) -> None:
    resp = post(base, request("vancomycin", "2026-03-01T12:00:00Z", q(2, "h")))  # one dose, no level yet
    fitted = resp.json()["entry"][0]["resource"]
    assert "Population prior only" in fitted["note"][0]["text"] and "0 starts" not in fitted["note"][0]["text"]
    for comp in fitted["component"]:
        for qty in (comp["valueQuantity"], comp["referenceRange"][0]["low"], comp["referenceRange"][0]["high"]):
            assert qty["system"] == UCUM and qty["code"] == qty["unit"]
    assert {c["valueQuantity"]["code"] for c in fitted["component"]} == {"L/h", "L"}


def test_glucose_care_plan_covers_the_forecast_and_advises_carbohydrates_as_an_activity(
        served: tuple[Store, str]) -> None:
    store, base = served
    publish(store, "glu-low", "glucose")
    in_force = [("patient", "glu-low"), ("date", "le2026-01-11T00:30:00Z"), ("date", "ge2026-01-11T00:30:00Z")]
    (plan,) = [e["resource"] for e in httpx.get(f"{base}/CarePlan", params=in_force).json().get("entry", [])]
    assert validate_resource(plan) == []
    assert instant(plan["period"]["start"]) == datetime(2026, 1, 10, 23, 45, tzinfo=UTC)  # the latest reading
    assert instant(plan["period"]["end"]) == datetime(2026, 1, 11, 1, 45, tzinfo=UTC)  # + the 2-h forecast
    details = [a["detail"] for a in plan.get("activity", [])]
    assert "carbohydrate" in plan["description"]
    assert [d["kind"] for d in details] == ["NutritionOrder"]
    assert all(d.get("quantity", {}).get("value") != 0 for d in details)

    publish(store, "glu-mmol", "glucose")  # advice in the unit of the patient's readings
    plan = httpx.get(f"{base}/CarePlan", params={"patient": "glu-mmol"}).json()["entry"][0]["resource"]
    assert "mmol/L" in plan["description"] and "mg/dL" not in plan["description"]
    assert all(a["detail"]["quantity"]["value"] > 0 for a in plan.get("activity", []))  # never "0 U of insulin"

    publish(store, "glu-high", "glucose")
    plan = httpx.get(f"{base}/CarePlan", params={"patient": "glu-high"}).json()["entry"][0]["resource"]
    (detail,) = [a["detail"] for a in plan["activity"]]
    assert detail["productCodeableConcept"]["coding"][0]["code"] == "5856" and "code" not in detail
    assert detail["quantity"]["value"] > 0 and "correction bolus" in plan["description"]


def test_published_vancomycin_starts_from_the_latest_dose_or_level(served: tuple[Store, str]) -> None:
    store, base = served
    written = publish(store, "tdm-001", "vancomycin")
    params_id = next(w.id for w in written if w.resource_type == "Observation")
    fitted = httpx.get(f"{base}/Observation/{params_id}").json()
    assert instant(fitted["effectiveDateTime"]) == datetime(2026, 3, 2, 22, tzinfo=UTC)  # the last level
    series = httpx.get(f"{base}/Observation", params={"patient": "tdm-001", "code": "20578-1", "_sort": "date",
                                                      "_count": "100"}).json()["entry"]
    assert instant(series[0]["resource"]["effectiveDateTime"]) == datetime(2026, 3, 2, 23, tzinfo=UTC)
    assert len(series) == 72
    assert all(e["resource"]["derivedFrom"] == [{"reference": f"Observation/{params_id}"}] for e in series)
    with pytest.raises(MissingData, match="no vancomycin doses or levels"):
        publish(store, SYNTHEA_PATIENT, "vancomycin")


def test_the_operation_definition_is_served_valid_and_lists_every_accepted_parameter(base: str) -> None:
    cap = httpx.get(f"{base}/metadata").json()
    patient = next(r for r in cap["rest"][0]["resource"] if r["type"] == "Patient")
    url = next(op["definition"] for op in patient["operation"] if op["name"] == "simulate")
    resp = httpx.get(f"{base}/OperationDefinition/Patient-simulate")
    assert resp.status_code == 200, resp.text
    definition = resp.json()
    assert definition["url"] == url
    assert validate_resource(definition) == []
    OperationDefinition(definition)  # fhirclient's strict R4 model
    inputs = {p["name"]: p for p in definition["parameter"] if p["use"] == "in"}
    assert set(inputs) == set(PARAMETERS)
    events = {e["name"]: {p["name"] for p in e["part"]} for e in inputs["scenario"]["part"]}
    assert events == {name: set(parts) for name, parts in EVENT_PARTS.items()}
    assert inputs["model"]["min"] == 1 and inputs["scenario"]["max"] == "*"
    assert httpx.get(f"{base}/OperationDefinition/Patient-nothing").status_code == 404


def test_operation_definitions_clients_store_are_read_as_any_resource(base: str) -> None:
    mine = {"resourceType": "OperationDefinition", "id": "mine", "name": "Mine", "status": "draft", "kind": "operation",
            "code": "mine", "system": False, "type": False, "instance": True}
    assert httpx.put(f"{base}/OperationDefinition/mine", json=mine).status_code == 201
    assert httpx.get(f"{base}/OperationDefinition/mine").json()["name"] == "Mine"
    assert httpx.get(f"{base}/OperationDefinition/Patient-simulate").json()["code"] == "simulate"
