"""Operations: $validate, Patient/$everything, $meta*, ViewDefinition/$run."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import orjson

VIEW = {"resourceType": "ViewDefinition", "resource": "Observation", "status": "active", "name": "hr",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                               {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
                               {"name": "value", "path": "value.ofType(Quantity).value"}]}]}


def test_validate_type_and_instance(http: httpx.Client, patient: Any) -> None:
    ok = http.post("Patient/$validate", json=patient("V")).json()
    assert [i["severity"] for i in ok["issue"]] == ["information"]
    bad = http.post("Patient/$validate", json={"resourceType": "Patient", "gender": 1}).json()
    assert bad["issue"][0]["expression"] == ["Patient.gender"]
    wrapped = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient("W")}]}
    assert http.post("Patient/$validate", json=wrapped).json()["issue"][0]["severity"] == "information"
    pid = http.post("Patient", json=patient("Vi")).json()["id"]
    assert http.get(f"Patient/{pid}/$validate").json()["issue"][0]["severity"] == "information"
    mismatch = http.post(f"Patient/{pid}/$validate", json=patient("Vi") | {"id": "zzz"}).json()
    assert mismatch["issue"][0]["severity"] == "error"


def test_everything_pages_the_compartment(http: httpx.Client, patient: Any, observation: Any) -> None:
    pid = http.post("Patient", json=patient("Ev")).json()["id"]
    other = http.post("Patient", json=patient("Other")).json()["id"]
    for i in range(5):
        http.post("Observation", json=observation(pid, value=i))
    http.post("Observation", json=observation(other))
    first = http.get(f"Patient/{pid}/$everything", params={"_count": "4"}).json()
    assert first["total"] == 6 and first["entry"][0]["resource"]["id"] == pid
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    rest = httpx.get(nxt).json()
    ids = {e["resource"]["id"] for e in first["entry"] + rest["entry"]}
    assert len(ids) == 6
    only_obs = http.get(f"Patient/{pid}/$everything", params={"_type": "Observation"}).json()
    assert only_obs["total"] == 5
    assert http.get("Patient/nobody/$everything").status_code == 404


def test_meta_add_and_delete(http: httpx.Client, patient: Any) -> None:
    pid = http.post("Patient", json=patient("Meta")).json()["id"]
    tag = {"system": "urn:tags", "code": "vip"}
    change = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [tag]}}]}
    added = http.post(f"Patient/{pid}/$meta-add", json=change).json()
    assert added["parameter"][0]["valueMeta"]["tag"] == [tag]
    assert http.get(f"Patient/{pid}/$meta").json()["parameter"][0]["valueMeta"]["tag"] == [tag]
    removed = http.post(f"Patient/{pid}/$meta-delete", json=change).json()
    assert "tag" not in removed["parameter"][0]["valueMeta"]


def test_view_definition_run(http: httpx.Client, patient: Any, observation: Any) -> None:
    pid = http.post("Patient", json=patient("View")).json()["id"]
    for v in (61, 62):
        http.post("Observation", json=observation(pid, value=v))
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "viewResource", "resource": VIEW}, {"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}},
        {"name": "_format", "valueCode": "csv"}]}
    response = http.post("ViewDefinition/$run", json=params)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert sorted(float(r["value"]) for r in rows) == [61, 62] and {r["patient"] for r in rows} == {pid}

    stored = http.put("ViewDefinition/hr", json=VIEW | {"id": "hr"})
    assert stored.status_code == 201
    ndjson = http.get("ViewDefinition/hr/$run", params={"_format": "ndjson", "patient": pid})
    lines = [orjson.loads(line) for line in ndjson.text.splitlines()]
    assert len(lines) == 2 and ndjson.headers["content-type"].startswith("application/x-ndjson")
    by_ref = {"resourceType": "Parameters", "parameter": [
        {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/hr"}},
        {"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}}, {"name": "_limit", "valueInteger": 1}]}
    assert len(http.post("ViewDefinition/$run", json=by_ref).json()) == 1
    broken = {"resourceType": "Parameters", "parameter": [{"name": "viewResource", "resource": {"resourceType":
                                                                                                 "ViewDefinition"}}]}
    assert http.post("ViewDefinition/$run", json=broken).status_code == 400
    assert http.put("ViewDefinition/bad", json={"resourceType": "ViewDefinition", "id": "bad"}).status_code == 422


def test_everything_finds_resources_through_any_compartment_reference(http: httpx.Client, patient: Any,
                                                                      observation: Any) -> None:
    pid = http.post("Patient", json=patient("Performer")).json()["id"]
    other = http.post("Patient", json=patient("Subject")).json()["id"]
    obs = observation(other)
    obs["performer"] = [{"reference": f"Patient/{pid}"}]  # in both patients' compartments
    oid = http.post("Observation", json=obs).json()["id"]
    since_later = http.get(f"Patient/{pid}/$everything", params={"_since": "2999-01-01T00:00:00Z"}).json()
    assert since_later["total"] == 0
    for who in (pid, other):
        bundle = http.get(f"Patient/{who}/$everything").json()
        assert ("Observation", oid) in {(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]}
        assert bundle["entry"][0]["resource"]["id"] == who
    http.delete(f"Observation/{oid}")
    assert http.get(f"Patient/{pid}/$everything").json()["total"] == 1
