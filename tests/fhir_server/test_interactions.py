"""REST interactions over HTTP: CRUD, versions and conditional headers, history, errors, formats."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from ingest.fhir_xml import xml_to_resource
from mapping.fhir_xml_write import resource_to_xml


def test_create_read_update_delete_with_versions(http: httpx.Client, patient: Any, observation: Any) -> None:
    created = http.post("Patient", json=patient("Crud"))
    assert created.status_code == 201
    body = created.json()
    pid = body["id"]
    assert body["meta"]["versionId"] == "1"
    assert created.headers["etag"] == 'W/"1"'
    assert created.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert "last-modified" in created.headers

    read = http.get(f"Patient/{pid}")
    assert read.status_code == 200 and read.json()["name"][0]["family"] == "Crud"
    assert read.headers["content-type"].startswith("application/fhir+json")

    updated = http.put(f"Patient/{pid}", json={**body, "gender": "male"}, headers={"If-Match": 'W/"1"'})
    assert updated.status_code == 200 and updated.headers["etag"] == 'W/"2"'
    stale = http.put(f"Patient/{pid}", json={**body, "gender": "other"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"

    assert http.get(f"Patient/{pid}/_history/1").json()["gender"] == "female"
    assert http.get(f"Patient/{pid}/_history/2").json()["gender"] == "male"
    assert http.get(f"Patient/{pid}/_history/9").status_code == 404

    assert http.delete(f"Patient/{pid}").status_code == 200
    assert http.get(f"Patient/{pid}").status_code == 410
    history = http.get(f"Patient/{pid}/_history").json()
    assert history["type"] == "history" and history["total"] == 3
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]


def test_update_creates_with_client_id_and_unchanged_content_keeps_version(http: httpx.Client, patient: Any, observation: Any) -> None:
    res = {**patient("Put"), "id": "put-1"}
    first = http.put("Patient/put-1", json=res)
    assert first.status_code == 201 and first.json()["id"] == "put-1"
    again = http.put("Patient/put-1", json=res)
    assert again.status_code == 200 and again.headers["etag"] == 'W/"1"'


def test_conditional_reads_answer_304(http: httpx.Client, patient: Any, observation: Any) -> None:
    pid = http.post("Patient", json=patient("Cond")).json()["id"]
    for tag in ("1", 'W/"1"', '"1"', "*"):
        assert http.get(f"Patient/{pid}", headers={"If-None-Match": tag}).status_code == 304
    assert http.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"7"'}).status_code == 200
    later = format_datetime(datetime.now(UTC).replace(year=2100), usegmt=True)
    earlier = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)
    assert http.get(f"Patient/{pid}", headers={"If-Modified-Since": later}).status_code == 304
    assert http.get(f"Patient/{pid}", headers={"If-Modified-Since": earlier}).status_code == 200


def test_conditional_create_update_delete(http: httpx.Client, patient: Any, observation: Any) -> None:
    p = patient("Cc", value="cc-1")
    first = http.post("Patient", json=p, headers={"If-None-Exist": "identifier=urn:test|cc-1"})
    assert first.status_code == 201
    same = http.post("Patient?identifier=urn:test|cc-1", json=p)
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]

    upd = http.put("Patient?identifier=urn:test|cc-1", json={**p, "gender": "male"})
    assert upd.status_code == 200 and upd.json()["id"] == first.json()["id"]
    new = http.put("Patient?identifier=urn:test|cc-2", json=patient("Cc2", value="cc-2"))
    assert new.status_code == 201

    http.post("Patient", json=patient("Dup", value="dup"))
    http.post("Patient", json={**patient("Dup", value="dup"), "gender": "male"})
    assert http.put("Patient?identifier=urn:test|dup", json=patient("Dup", value="dup")).status_code == 412
    assert http.post("Patient?identifier=urn:test|dup", json=patient("Dup", value="dup")).status_code == 412
    assert http.delete("Patient?identifier=urn:test|dup").status_code == 412

    assert http.delete("Patient?identifier=urn:test|cc-2").status_code == 200
    assert http.get(f"Patient/{new.json()['id']}").status_code == 410


def test_prefer_return(http: httpx.Client, patient: Any, observation: Any) -> None:
    minimal = http.post("Patient", json=patient("Min"), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b"" and "location" in minimal.headers
    oo = http.post("Patient", json=patient("Oo"), headers={"Prefer": "return=OperationOutcome"})
    assert oo.json()["resourceType"] == "OperationOutcome"


def test_errors_are_operation_outcomes(http: httpx.Client, patient: Any, observation: Any) -> None:
    pid = http.post("Patient", json=patient("Err")).json()["id"]
    cases = [
        (http.post("Patient", content=b"{not json", headers={"Content-Type": "application/fhir+json"}), 400),
        (http.post("Patient", json=["a"]), 400),
        (http.post("Patient", json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}}), 400),
        (http.put(f"Patient/{pid}", json={**patient("Err"), "id": "other"}), 400),
        (http.post("Patient", json={"resourceType": "Patient", "gender": 3, "bogus": 1}), 422),
        (http.post("Patient", content=b"hello", headers={"Content-Type": "text/plain"}), 415),
        (http.get("NotAType/1"), 404),
        (http.get("Patient/does-not-exist"), 404),
        (http.post(f"Patient/{pid}/_history", json=patient("x")), 405),
        (http.get("Patient", params={"_count": "-1"}), 400),
        (http.get(f"Patient/{pid}", params={"_format": "turtle"}), 406),
        (http.put(f"Patient/{pid}", json=patient("Err") | {"id": pid}, headers={"If-Match": "garbage"}), 400),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
    invalid = cases[4][0].json()
    assert {tuple(i["expression"]) for i in invalid["issue"]} >= {("Patient.gender",), ("Patient.bogus",)}


def test_xml_in_and_out(http: httpx.Client, patient: Any, observation: Any) -> None:
    xml = resource_to_xml(patient("Xml"))
    created = http.post("Patient", content=xml, headers={"Content-Type": "application/fhir+xml",
                                                          "Accept": "application/fhir+xml"})
    assert created.status_code == 201 and created.headers["content-type"].startswith("application/fhir+xml")
    back = xml_to_resource(created.content)
    assert back["name"] == [{"family": "Xml"}]
    as_xml = http.get(f"Patient/{back['id']}", params={"_format": "xml"})
    assert xml_to_resource(as_xml.content)["id"] == back["id"]
    assert http.get(f"Patient/{back['id']}", params={"_pretty": "true"}).text.startswith('{\n  "')


def test_search_paging_post_search_and_shaping(http: httpx.Client, patient: Any, observation: Any) -> None:
    pid = http.post("Patient", json=patient("Pager")).json()["id"]
    for i in range(7):
        assert http.post("Observation", json=observation(pid, value=60 + i)).status_code == 201
    page = http.get("Observation", params={"subject": f"Patient/{pid}", "_count": "3"}).json()
    assert page["total"] == 7 and len(page["entry"]) == 3
    seen = [e["resource"]["id"] for e in page["entry"]]
    while nxt := next((link["url"] for link in page["link"] if link["relation"] == "next"), None):
        page = httpx.get(nxt).json()
        seen += [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "match"]
    assert len(set(seen)) == 7
    posted = http.post("Observation/_search", data={"subject": f"Patient/{pid}", "_count": "2"})
    assert posted.status_code == 200 and posted.json()["total"] == 7
    counted = http.get("Observation", params={"subject": f"Patient/{pid}", "_summary": "count"}).json()
    assert counted["total"] == 7 and "entry" not in counted
    elements = http.get("Observation", params={"subject": f"Patient/{pid}", "_elements": "status"}).json()
    assert set(elements["entry"][0]["resource"]) == {"resourceType", "id", "meta", "status", "code"}
    included = http.get("Observation", params={"subject": f"Patient/{pid}", "_include": "Observation:subject"})
    modes = {e["search"]["mode"] for e in included.json()["entry"]}
    assert modes == {"match", "include"}


def test_history_type_and_system_with_since(http: httpx.Client, patient: Any, observation: Any) -> None:
    before = datetime.now(UTC).isoformat()
    time.sleep(0.01)
    pid = http.post("Patient", json=patient("Hist")).json()["id"]
    http.post("Observation", json=observation(pid))
    since = http.get("_history", params={"_since": before}).json()
    assert since["total"] == 2
    assert {e["resource"]["resourceType"] for e in since["entry"]} == {"Patient", "Observation"}
    typed = http.get("Patient/_history", params={"_since": before, "_count": "1"}).json()
    assert typed["total"] == 1 and typed["entry"][0]["resource"]["id"] == pid
    assert http.get("Patient/_history", params={"_since": "yesterday"}).status_code == 400


def test_history_at_lists_the_versions_current_then(http: httpx.Client, patient: Any) -> None:
    body = http.post("Patient", json=patient("At")).json()
    pid, first = body["id"], body["meta"]["lastUpdated"]
    second = http.put(f"Patient/{pid}", json={**body, "gender": "male"}).json()["meta"]["lastUpdated"]
    third = http.put(f"Patient/{pid}", json={**body, "gender": "other"}).json()["meta"]["lastUpdated"]

    def versions(at: str) -> list[str]:
        answer = http.get(f"Patient/{pid}/_history", params={"_at": at})
        assert answer.status_code == 200, answer.text
        return [e["resource"]["meta"]["versionId"] for e in answer.json().get("entry", [])]

    assert versions(third) == ["3"] and versions(datetime.now(UTC).isoformat()) == ["3"]
    assert versions(second) == ["2"] and versions(first) == ["1"]
    assert versions(first[:10]) == ["3", "2", "1"]  # a day: every version current at some time in it
    assert versions("2000-01-01") == []
    answer = http.get(f"Patient/{pid}/_history", params={"_at": "yesterday"})
    assert answer.status_code == 400 and "_at" in answer.text


def test_capability_statement_lists_what_is_implemented(http: httpx.Client, patient: Any, observation: Any) -> None:
    cap = http.get("metadata").json()
    assert cap["fhirVersion"] == "4.0.1"
    rest = cap["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system", "search-system"}
    obs = next(r for r in rest["resource"] if r["type"] == "Observation")
    assert {"read", "vread", "update", "patch", "delete", "create", "search-type"} <= {
        i["code"] for i in obs["interaction"]}
    assert {"code", "date", "subject", "patient", "value-quantity"} <= {p["name"] for p in obs["searchParam"]}
    pat = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"everything", "validate", "meta"} <= {o["name"] for o in pat["operation"]}


def test_summary_true_keeps_summary_elements_only(http: httpx.Client, patient: Any) -> None:
    created = http.post("Patient", json={**patient("Summarized"), "maritalStatus": {"text": "single"},
                                         "communication": [{"language": {"text": "en"}}]}).json()
    body = http.get(f"Patient/{created['id']}", params={"_summary": "true"}).json()
    assert {"name", "gender", "birthDate", "identifier"} <= set(body)
    assert "maritalStatus" not in body and "communication" not in body
    assert any(t["code"] == "SUBSETTED" for t in body["meta"]["tag"])


def test_summary_and_elements_match_names_exactly_and_choices_by_their_variants(
        http: httpx.Client, patient: Any, observation: Any) -> None:
    pid = http.post("Patient", json=patient("Choices")).json()["id"]
    order = {"resourceType": "MedicationRequest", "status": "stopped", "statusReason": {"text": "side effects"},
             "intent": "order", "reportedBoolean": True, "medicationCodeableConcept": {"text": "aspirin"},
             "subject": {"reference": f"Patient/{pid}"}, "courseOfTherapyType": {"text": "acute"}}
    mid = http.post("MedicationRequest", json=order).json()["id"]
    summary = http.get(f"MedicationRequest/{mid}", params={"_summary": "true"}).json()
    assert set(summary) == {"resourceType", "id", "meta", "status", "intent", "reportedBoolean",
                            "medicationCodeableConcept", "subject"}
    searched = http.get("MedicationRequest", params={"_id": mid, "_summary": "true"}).json()
    assert searched["entry"][0]["resource"] == summary
    status = http.get(f"MedicationRequest/{mid}", params={"_elements": "status"}).json()
    assert "statusReason" not in status and status["status"] == "stopped"
    oid = http.post("Observation", json=observation(pid, value=72)).json()["id"]
    value = http.get(f"Observation/{oid}", params={"_elements": "value"}).json()
    assert set(value) == {"resourceType", "id", "meta", "status", "code", "valueQuantity"}
    assert value["valueQuantity"]["value"] == 72
    effective = http.get("Observation", params={"_id": oid, "_elements": "effective,subject"}).json()
    assert set(effective["entry"][0]["resource"]) == {"resourceType", "id", "meta", "status", "code",
                                                      "effectiveDateTime", "subject"}


def test_count_above_the_page_limit_is_said_not_silently_cut(http: httpx.Client) -> None:
    bundle = http.get("Patient", params={"_count": "5000"}).json()
    outcomes = [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "outcome"]
    assert outcomes and "page limit" in outcomes[0]["issue"][0]["diagnostics"]


@pytest.mark.parametrize("path", ["Patient", "_history", "Patient/_history", ""])
@pytest.mark.parametrize(("name", "value"), [("_offset", "99999999999999999999"), ("_count", "-1"),
                                             ("_offset", "x")])
def test_paging_values_out_of_range_are_a_400_with_the_parameter(http: httpx.Client, path: str, name: str,
                                                                  value: str) -> None:
    r = http.get(path, params={name: value})
    assert r.status_code == 400, r.text
    assert name in r.json()["issue"][0]["diagnostics"]


def test_app_keeps_the_hot_map_out_of_full_collections(patient: Any) -> None:
    import gc

    from fhir_server.app import create_app
    from store.store import Store

    with Store() as store:
        store.write([{**patient(f"Frozen{i}"), "id": f"frozen-{i}"} for i in range(50)])
        gc.unfreeze()
        create_app(store)
        assert gc.get_freeze_count() >= 50


def test_summary_text_and_elements_keep_mandatory_elements(http: httpx.Client, patient: Any, observation: Any) -> None:
    pid = http.post("Patient", json=patient("Mandatory")).json()["id"]
    narrative = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">pulse 70</div>'}
    oid = http.post("Observation", json={**observation(pid), "text": narrative}).json()["id"]
    text = http.get(f"Observation/{oid}", params={"_summary": "text"}).json()
    assert set(text) == {"resourceType", "id", "meta", "text", "status", "code"}
    assert text["code"]["coding"][0]["code"] == "8867-4"
    searched = http.get("Observation", params={"_id": oid, "_summary": "text"}).json()
    assert set(searched["entry"][0]["resource"]) == set(text)
    elements = http.get(f"Observation/{oid}", params={"_elements": "subject"}).json()
    assert set(elements) == {"resourceType", "id", "meta", "subject", "status", "code"}
    birth = http.put(f"Patient/{pid}", json={**patient("Mandatory"), "id": pid, "_birthDate": {
        "extension": [{"url": "http://example.org/precision", "valueCode": "day"}]}}).json()
    assert set(http.get(f"Patient/{pid}", params={"_elements": "birthDate"}).json()) == {
        "resourceType", "id", "meta", "birthDate", "_birthDate"}
    assert birth["_birthDate"]["extension"][0]["valueCode"] == "day"


def test_history_delete_entry_agrees_with_the_rest_delete(http: httpx.Client) -> None:
    basic = {"resourceType": "Basic", "id": "h13", "code": {"text": "x"}}
    assert http.put("Basic/h13", json=basic).status_code == 201
    assert http.put("Basic/h13", json={**basic, "code": {"text": "y"}}).status_code == 200
    assert http.delete("Basic/h13").status_code == 200
    entries = http.get("Basic/h13/_history").json()["entry"]
    assert [(e["request"]["method"], e["response"]["status"]) for e in entries] == [
        ("DELETE", "200"), ("PUT", "200"), ("PUT", "201")]  # created by PUT with the client's id
    assert "resource" not in entries[0] and entries[0]["request"]["url"] == "Basic/h13"
    assert entries[2]["request"]["url"] == "Basic/h13"


def test_history_reports_the_interaction_that_wrote_each_version(
    http: httpx.Client, server: tuple[Any, str]
) -> None:
    """POST, PUT and PATCH as sent, over REST and in a transaction; versions no REST interaction wrote
    (an import, a message, a twin) show a create as POST and later versions as PUT."""
    basic = {"resourceType": "Basic", "code": {"text": "x"}}
    rid = http.post("Basic", json=basic).json()["id"]
    patched = http.patch(f"Basic/{rid}", content=b'[{"op": "replace", "path": "/code/text", "value": "y"}]',
                         headers={"Content-Type": "application/json-patch+json"})
    assert patched.status_code == 200
    assert http.put(f"Basic/{rid}", json={**basic, "id": rid, "code": {"text": "z"}}).status_code == 200

    def methods(path: str) -> list[tuple[str, str]]:
        return [(e["request"]["method"], e["request"]["url"]) for e in http.get(path).json()["entry"]]

    assert methods(f"Basic/{rid}/_history") == [("PUT", f"Basic/{rid}"), ("PATCH", f"Basic/{rid}"), ("POST", "Basic")]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**basic, "id": "h-tx-put"}, "request": {"method": "PUT", "url": "Basic/h-tx-put"}},
        {"fullUrl": "urn:uuid:0b0e6a52-7c1f-4d0e-9a50-3f3c1a2b4c5d", "resource": basic,
         "request": {"method": "POST", "url": "Basic"}},
    ]}
    answer = http.post("", json=bundle).json()
    posted = answer["entry"][1]["response"]["location"].split("/")[1]
    assert methods("Basic/h-tx-put/_history") == [("PUT", "Basic/h-tx-put")]
    assert methods(f"Basic/{posted}/_history") == [("POST", "Basic")]
    store = server[0]
    store.write([{**basic, "id": "h-imported"}])
    store.write([{**basic, "id": "h-imported", "code": {"text": "again"}}])
    assert methods("Basic/h-imported/_history") == [("PUT", "Basic/h-imported"), ("POST", "Basic")]


def test_if_match_on_a_missing_or_deleted_resource_is_412_saying_so(http: httpx.Client) -> None:
    basic = {"resourceType": "Basic", "id": "h13-none", "code": {"text": "x"}}
    missing = http.put("Basic/h13-none", json=basic, headers={"If-Match": 'W/"1"'})
    assert missing.status_code == 412
    assert "does not exist" in missing.json()["issue"][0]["diagnostics"]
    assert http.get("Basic/h13-none").status_code == 404
    assert http.put("Basic/h13-none", json=basic).status_code == 201
    assert http.delete("Basic/h13-none").status_code == 200
    deleted = http.put("Basic/h13-none", json=basic, headers={"If-Match": 'W/"2"'})
    assert deleted.status_code == 412 and "was deleted" in deleted.json()["issue"][0]["diagnostics"]
