"""PATCH: JSON Patch, merge patch (what fhirpy sends) and FHIRPath Patch."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def _op(kind: str, path: str, **parts: Any) -> dict[str, Any]:
    items = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        items.append(value if isinstance(value, dict) and "name" in value else {"name": name, **value})
    return {"name": "operation", "part": items}


def test_json_patch_and_test_failure(http: httpx.Client, patient: Any) -> None:
    pid = http.post("Patient", json=patient("Jp")).json()["id"]
    ops = [{"op": "add", "path": "/name/0/given", "value": ["Ann"]},
           {"op": "replace", "path": "/gender", "value": "male"},
           {"op": "remove", "path": "/birthDate"}]
    patched = http.patch(f"Patient/{pid}", json=ops, headers=JSON_PATCH)
    assert patched.status_code == 200 and patched.headers["etag"] == 'W/"2"'
    body = patched.json()
    assert body["name"][0]["given"] == ["Ann"] and body["gender"] == "male" and "birthDate" not in body
    failing = [{"op": "test", "path": "/gender", "value": "female"}, {"op": "remove", "path": "/gender"}]
    assert http.patch(f"Patient/{pid}", json=failing, headers=JSON_PATCH).status_code == 422
    invalid = [{"op": "replace", "path": "/gender", "value": 5}]
    assert http.patch(f"Patient/{pid}", json=invalid, headers=JSON_PATCH).status_code == 422
    assert http.patch(f"Patient/{pid}", json=ops[:1], headers=JSON_PATCH | {"If-Match": 'W/"1"'}).status_code == 412
    assert http.get(f"Patient/{pid}").json()["gender"] == "male"


def test_merge_patch(http: httpx.Client, patient: Any) -> None:
    pid = http.post("Patient", json=patient("Mp")).json()["id"]
    body = http.patch(f"Patient/{pid}", json={"gender": "other", "birthDate": None}).json()
    assert body["gender"] == "other" and "birthDate" not in body and body["name"] == [{"family": "Mp"}]


def test_fhirpath_patch_operations(http: httpx.Client, patient: Any) -> None:
    p = patient("Fp") | {"identifier": [{"system": "urn:a", "value": "1"}, {"system": "urn:b", "value": "2"}]}
    pid = http.post("Patient", json=p).json()["id"]
    params = {"resourceType": "Parameters", "parameter": [
        _op("add", "Patient", name={"valueString": "telecom"},
            value={"name": "value", "part": [{"name": "system", "valueCode": "phone"},
                                             {"name": "value", "valueString": "555"}]}),
        _op("replace", "Patient.gender", value={"valueCode": "male"}),
        _op("delete", "Patient.identifier.where(system='urn:a')"),
        _op("insert", "Patient.name", index={"valueInteger": 0},
            value={"name": "value", "valueHumanName": {"family": "First"}}),
        _op("move", "Patient.name", source={"valueInteger": 0}, destination={"valueInteger": 1}),
        _op("delete", "Patient.birthDate"),
    ]}
    response = http.patch(f"Patient/{pid}", json=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["telecom"] == [{"system": "phone", "value": "555"}]
    assert body["gender"] == "male"
    assert body["identifier"] == [{"system": "urn:b", "value": "2"}]
    assert [n["family"] for n in body["name"]] == ["Fp", "First"]
    assert "birthDate" not in body
    bad = {"resourceType": "Parameters", "parameter": [_op("replace", "Patient.name", value={"valueString": "x"})]}
    assert http.patch(f"Patient/{pid}", json=bad).status_code == 422


@pytest.mark.parametrize(("operation", "needle"), [
    (_op("delete", "Patient"), "selects the whole resource"),
    (_op("replace", "Patient", value={"valueString": "x"}), "selects the whole resource"),
    (_op("insert", "Patient.id", index={"valueInteger": 0}, value={"valueString": "x"}), "not a list"),
    (_op("move", "Patient.gender", source={"valueInteger": 0}, destination={"valueInteger": 0}), "not a list"),
])
def test_a_fhirpath_patch_that_cannot_apply_is_refused_with_why(http: httpx.Client, patient: Any,
                                                                 operation: dict, needle: str) -> None:
    pid = http.post("Patient", json=patient("Np") | {"gender": "female"}).json()["id"]
    response = http.patch(f"Patient/{pid}", json={"resourceType": "Parameters", "parameter": [operation]})
    assert response.status_code == 422, response.text
    assert needle in response.json()["issue"][0]["diagnostics"]
    assert http.get(f"Patient/{pid}").json()["meta"]["versionId"] == "1"  # nothing applied
