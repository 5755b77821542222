"""Batch and transaction Bundles: urn:uuid and conditional references, all-or-nothing, per-entry status."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson

from store.store import Store

PAT_URN = "urn:uuid:6a0b6d2e-4c1e-4a0e-9a43-2f6f5d1c0001"


def _tx(entries: list[dict[str, Any]], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def test_transaction_resolves_uuids_and_conditional_refs(http: httpx.Client, patient: Any,
                                                        observation: Any) -> None:
    existing = http.post("Patient", json=patient("Known", value="known-1")).json()["id"]
    bundle = _tx([
        {"fullUrl": PAT_URN, "resource": patient("New", value="tx-new"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:test|tx-new"}},
        {"resource": observation("x") | {"subject": {"reference": PAT_URN}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation("x") | {"subject": {"reference": "Patient?identifier=urn:test|known-1"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": f"Patient/{existing}"}},
    ])
    response = http.post("", json=bundle)
    assert response.status_code == 200
    out = response.json()
    assert out["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created", "200 OK"]
    new_id = out["entry"][0]["resource"]["id"]
    assert out["entry"][0]["response"]["location"] == f"Patient/{new_id}/_history/1"
    assert out["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{new_id}"
    assert out["entry"][2]["resource"]["subject"]["reference"] == f"Patient/{existing}"
    assert out["entry"][3]["resource"]["id"] == existing

    no_slash = str(http.base_url).rstrip("/")
    assert no_slash.endswith("/fhir")
    again = http.post(no_slash, json=bundle).json()
    assert again["entry"][0]["response"]["status"] == "200 OK"
    assert again["entry"][0]["resource"]["id"] == new_id


def test_transaction_is_all_or_nothing(server: tuple[Store, str], http: httpx.Client, patient: Any) -> None:
    store, _ = server
    before = store.count()
    bundle = _tx([
        {"resource": patient("Ok", value="atomic-ok"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": 12}, "request": {"method": "POST", "url": "Patient"}},
    ])
    response = http.post("", json=bundle)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    dangling = _tx([{"resource": patient("D") | {"link": [{"other": {"reference": "urn:uuid:nowhere"},
                                                             "type": "seealso"}]},
                     "request": {"method": "POST", "url": "Patient"}}])
    assert http.post("", json=dangling).status_code == 400
    assert store.count() == before


def test_transaction_put_delete_patch_and_if_match(http: httpx.Client, patient: Any) -> None:
    pid = http.post("Patient", json=patient("Ops", value="ops")).json()["id"]
    gone = http.post("Patient", json=patient("Gone", value="gone")).json()["id"]
    json_patch = base64.b64encode(orjson.dumps([{"op": "replace", "path": "/gender", "value": "male"}])).decode()
    bundle = _tx([
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": json_patch},
         "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:test|gone"}},
        {"resource": patient("Put", value="put") | {"id": "tx-put"}, "request": {"method": "PUT", "url": "Patient/tx-put"}},
    ])
    out = http.post("", json=bundle).json()
    assert [e["response"]["status"] for e in out["entry"]] == ["200 OK", "200 OK", "201 Created"]
    assert http.get(f"Patient/{pid}").json()["gender"] == "male"
    assert http.get(f"Patient/{gone}").status_code == 410
    stale = _tx([{"resource": patient("Ops", value="ops") | {"id": pid},
                  "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'}}])
    assert http.post("", json=stale).status_code == 412


def test_batch_reports_each_entry(http: httpx.Client, patient: Any) -> None:
    bundle = _tx([
        {"resource": patient("B1"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": 1}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing-one"}},
        {"request": {"method": "GET", "url": "Patient?identifier=urn:test|B1"}},
    ], kind="batch")
    out = http.post("", json=bundle).json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "404 Not Found", "200 OK"]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert out["entry"][3]["resource"]["total"] == 1


def test_bad_bundles(http: httpx.Client, patient: Any) -> None:
    assert http.post("", json={"resourceType": "Bundle", "type": "collection"}).status_code == 400
    assert http.post("", json=_tx([{"resource": patient("x")}])).status_code == 400
    assert http.post("", json=_tx([{"request": {"method": "POST", "url": "Nope"}, "resource": patient("x")}])
                     ).status_code == 404


BINARY_URN = "urn:uuid:55555555-5555-4555-8555-555555555555"


def test_transaction_replaces_full_urls_in_uri_elements_and_narrative(http: httpx.Client) -> None:
    div = (f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{BINARY_URN}">doc</a>'
           f'<img src=\'{BINARY_URN}\'/><a href="urn:uuid:other">x</a></div>')
    document = {"resourceType": "DocumentReference", "status": "current",
                "meta": {"profile": [BINARY_URN]},
                "text": {"status": "generated", "div": div},
                "extension": [{"url": "http://example.org/source", "valueUri": BINARY_URN}],
                "content": [{"attachment": {"contentType": "text/plain", "url": BINARY_URN}}]}
    bundle = _tx([
        {"fullUrl": BINARY_URN, "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="},
         "request": {"method": "POST", "url": "Binary"}},
        {"fullUrl": "urn:uuid:66666666-6666-4666-8666-666666666666", "resource": document,
         "request": {"method": "POST", "url": "DocumentReference"}},
    ])
    response = http.post("", json=bundle)
    assert response.status_code == 200, response.text
    binary = f"Binary/{response.json()['entry'][0]['resource']['id']}"
    stored = http.get(response.json()["entry"][1]["response"]["location"]).json()
    assert stored["content"][0]["attachment"]["url"] == binary
    assert stored["extension"][0]["valueUri"] == binary
    assert stored["text"]["div"] == (f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{binary}">doc</a>'
                                     f'<img src=\'{binary}\'/><a href="urn:uuid:other">x</a></div>')
    assert stored["meta"]["profile"] == [BINARY_URN]  # canonical: not replaced


def test_batch_get_entries_answer_as_the_rest_api(http: httpx.Client, patient: Any) -> None:
    pid = http.put("Patient/b11", json=patient("B11") | {"id": "b11"}).json()["id"]
    http.put(f"Patient/{pid}", json=patient("B11", value="second") | {"id": pid})
    bundle = _tx([
        {"request": {"method": "GET", "url": f"Patient/{pid}", "ifNoneMatch": 'W/"2"'}},
        {"request": {"method": "GET", "url": f"Patient/{pid}", "ifNoneMatch": 'W/"1"'}},
        {"request": {"method": "GET", "url": f"Patient/{pid}", "ifModifiedSince": "2099-01-01T00:00:00Z"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}", "ifModifiedSince": "2000-01-01T00:00:00Z"}},
        {"request": {"method": "HEAD", "url": f"Patient/{pid}"}},
        {"request": {"method": "GET", "url": "metadata"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}/_history?_count=1"}},
        {"request": {"method": "GET", "url": "Patient/_history"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}/$meta"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}/$everything"}},
        {"request": {"method": "GET", "url": "Patient/nobody/_history"}},
    ], kind="batch")
    entries = http.post("", json=bundle).json()["entry"]
    statuses = [e["response"]["status"] for e in entries]
    assert statuses == ["304 Not Modified", "200 OK", "304 Not Modified", "200 OK", "405 Method Not Allowed",
                        "200 OK", "200 OK", "200 OK", "200 OK", "400 Bad Request", "404 Not Found"]
    assert "resource" not in entries[0] and entries[0]["response"]["etag"] == 'W/"2"'
    assert "resource" not in entries[2] and entries[1]["resource"]["id"] == pid
    assert "resource" not in entries[4] and "HEAD" in entries[4]["response"]["outcome"]["issue"][0]["diagnostics"]
    capability = http.get("metadata").json()
    assert entries[5]["resource"] | {"date": capability["date"]} == capability  # the date may turn midnight
    history = entries[6]["resource"]
    assert history == http.get(f"Patient/{pid}/_history", params={"_count": "1"}).json()
    assert history["type"] == "history" and history["total"] == 2 and len(history["entry"]) == 1
    assert entries[7]["resource"]["total"] == http.get("Patient/_history").json()["total"]
    assert entries[8]["resource"] == http.get(f"Patient/{pid}/$meta").json()
    assert "$everything" in entries[9]["response"]["outcome"]["issue"][0]["diagnostics"]
    head = _tx([{"request": {"method": "HEAD", "url": f"Patient/{pid}"}}])
    assert http.post("", json=head).status_code == 405
    assert http.head(f"Patient/{pid}").status_code == 405


def test_batch_if_modified_since_is_a_fhir_instant_compared_to_the_microsecond(http: httpx.Client,
                                                                               patient: Any) -> None:
    first = http.put("Patient/ims1", json=patient("Ims") | {"id": "ims1"}).json()["meta"]["lastUpdated"]
    later = http.put("Patient/ims1", json=patient("Ims", value="2") | {"id": "ims1"}).json()["meta"]["lastUpdated"]
    assert later[:19] == first[:19] or later > first  # often the same second: the fraction decides
    entries = http.post("", json=_tx([{"request": {"method": "GET", "url": "Patient/ims1", "ifModifiedSince": t}}
                                      for t in (first, later)], kind="batch")).json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "304 Not Modified"]
    assert entries[0]["resource"]["meta"]["versionId"] == "2"


def test_batch_search_entries_answer_as_the_rest_search(http: httpx.Client, patient: Any,
                                                         observation: Any) -> None:
    pid = http.post("Patient", json=patient("Sbatch", value="sbatch")).json()["id"]
    for value in (60, 61):
        http.post("Observation", json=observation(pid, value=value))
    http.post("MedicationRequest", json={
        "resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "statusReason": {"text": "kept only in full"}, "subject": {"reference": f"Patient/{pid}"},
        "medicationCodeableConcept": {"text": "aspirin"}})
    urls = [
        f"Observation?subject=Patient/{pid}&_include=Observation:subject",
        f"Patient?_id={pid}&_revinclude=Observation:subject",
        "Patient?family=Sbatch&famly=Sbatch",
        f"Observation?subject=Patient/{pid}&_include=Observation:nothing",
        f"Observation?subject=Patient/{pid}&_elements=value",
        f"MedicationRequest?subject=Patient/{pid}&_summary=true",
        "Patient?family=Sbatch&_summary=count",
        f"Patient/{pid}/Observation?_count=1",
        "?_type=Patient&family=Sbatch",
        "Patient?family=Sbatch&_count=5000",
    ]
    bundle = _tx([{"request": {"method": "GET", "url": url}} for url in urls], kind="batch")
    entries = http.post("", json=bundle).json()["entry"]
    for url, entry in zip(urls, entries, strict=True):
        assert entry["response"]["status"] == "200 OK", url
        assert entry["resource"] == http.get(url).json(), url
    assert len(entries[0]["resource"]["entry"]) == 3  # two Observations and their subject
    assert entries[2]["resource"]["entry"][-1]["search"]["mode"] == "outcome"

    strict = _tx([{"request": {"method": "GET", "url": "Patient?family=Sbatch&famly=Sbatch"}},
                  {"request": {"method": "GET", "url": f"Patient?_id={pid}"}}], kind="batch")
    headers = {"Prefer": "handling=strict"}
    refused, found = http.post("", json=strict, headers=headers).json()["entry"]
    rest = http.get("Patient?family=Sbatch&famly=Sbatch", headers=headers)
    assert rest.status_code == 400
    assert refused["response"] == {"status": "400 Bad Request", "outcome": rest.json()}
    assert found["resource"]["total"] == 1
    assert http.post("", json=_tx(strict["entry"][:1]), headers=headers).status_code == 400
