"""``POST /fhir/Patient/{id}/$simulate`` over HTTP, with the contract's own example request."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from fhirclient.models.bundle import Bundle
from fhirclient.models.observation import Observation
from support import FIXTURES, live_server

from fhir_server.app import create_app
from ingest.pipeline import Ingestor
from store.store import Store

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


@pytest.fixture(scope="module")
def base() -> str:
    store = Store(":memory:")
    Ingestor(store).ingest_paths([FIXTURES / "tdm" / "fhir", FIXTURES / "synthea" / "ndjson" / "Patient.ndjson"])
    with live_server(create_app(store)) as url:
        yield url
    store.close()


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
