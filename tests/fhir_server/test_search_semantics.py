"""Search semantics over HTTP that the in-memory fast paths, POST search and chains must keep:
text search, output parameters in a POST body, chain and include validation, foreign reference
URLs, Patient compartment search, content negotiation and what /metadata advertises."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

STRICT = {"Prefer": "handling=strict"}


@pytest.fixture(scope="module")
def written(http: httpx.Client, patient: Any, observation: Any) -> dict[str, Any]:
    p = patient("Quokka")
    p["address"] = [{"city": "Timbuktu"}]
    p["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Zebrafish keeper</div>'}
    pid = http.post("Patient", json=p).json()["id"]
    other = http.post("Patient", json=patient("Numbat")).json()["id"]
    obs = observation(pid)
    obs["code"]["text"] = "Wombat score"
    oids = [http.post("Observation", json=obs).json()["id"]]
    oids += [http.post("Observation", json=observation(pid, value=v)).json()["id"] for v in (61, 62)]
    other_obs = http.post("Observation", json=observation(other)).json()["id"]
    return {"pid": pid, "other": other, "oids": oids, "other_obs": other_obs}


def matches(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def outcome_notes(bundle: dict) -> list[str]:
    return [i["diagnostics"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"
            for i in e["resource"]["issue"]]


@pytest.mark.parametrize(("path", "params", "who"), [
    ("Patient", {"_text": "Zebrafish"}, "pid"),
    ("Patient", {"_content": "Timbuktu"}, "pid"),
    ("Observation", {"patient": "{pid}", "_content": "Wombat"}, "oid"),
])
def test_text_search_on_the_in_memory_paths(http: httpx.Client, written: dict[str, Any], path: str,
                                            params: dict[str, str], who: str) -> None:
    """Patient (a small type) and patient-anchored searches are answered in memory; text search must
    still find what SQL finds."""
    asked = {k: v.format(**written) for k, v in params.items()}
    found = http.get(path, params=asked).json()
    assert matches(found) == [written["pid"] if who == "pid" else written["oids"][0]]


@pytest.mark.parametrize(("params", "found"), [
    ({"_content": "family"}, False),  # only a property name
    ({"_content": "FAMILY", "_id": "{pid}"}, False),
    ({"_content": "timbuk"}, True),  # part of a value, any case
    ({"_text": "xmlns"}, False),  # markup, not the narrative's text
    ({"_text": "w3.org"}, False),
    ({"_text": "ZEBRAFISH KEEP"}, True),
])
def test_text_search_reads_text_not_names_or_markup(http: httpx.Client, written: dict[str, Any],
                                                   params: dict[str, str], found: bool) -> None:
    asked = {k: v.format(**written) for k, v in params.items()}
    for path, query in (("Patient", asked), ("Observation", {**asked, "patient": written["pid"]})):
        hits = matches(http.get(path, params=query).json())
        if path == "Patient":
            assert hits == ([written["pid"]] if found else []), (path, query)
        else:  # the Observations hold no such text, and "subject" and "status" are names only
            assert hits == [], (path, query)
    assert matches(http.get("Observation", params={"_content": "status", "patient": written["pid"]}).json()) == []


def test_text_search_across_types(http: httpx.Client, written: dict[str, Any]) -> None:
    found = http.get("", params={"_content": "Timbuktu"}).json()
    assert matches(found) == [written["pid"]]


def test_named_query_is_an_unknown_parameter(http: httpx.Client, written: dict[str, Any]) -> None:
    lenient = http.get("Patient", params={"_query": "anything", "_id": written["pid"]}).json()
    assert matches(lenient) == [written["pid"]]
    assert any("_query" in note for note in outcome_notes(lenient))
    assert http.get("Patient", params={"_query": "anything"}, headers=STRICT).status_code == 400
    cap = http.get("metadata").json()["rest"][0]
    assert all(p["name"] != "_query" for r in cap["resource"] for p in r["searchParam"])


@pytest.mark.parametrize("path", ["Patient/_search", "_search"])
def test_post_search_applies_output_parameters_of_the_form(http: httpx.Client, written: dict[str, Any],
                                                           path: str) -> None:
    form = {"_id": written["pid"], "_elements": "birthDate"}
    if path == "_search":
        form["_type"] = "Patient"
    shaped = http.post(path, data=form).json()
    resource = shaped["entry"][0]["resource"]
    assert "birthDate" in resource and "name" not in resource
    assert "SUBSETTED" in [t["code"] for t in resource["meta"]["tag"]]
    summary = http.post(path, data={**form, "_elements": "", "_summary": "true"}).json()["entry"][0]["resource"]
    assert "name" in summary and "text" not in summary
    xml = http.post(path, data={**form, "_format": "xml", "_pretty": "true"})
    assert xml.headers["content-type"].startswith("application/fhir+xml")
    assert "<Bundle " in xml.text and "\n  <type" in xml.text


@pytest.mark.parametrize(("accept", "status", "media"), [
    ("application/fhir+xml;q=0, application/fhir+json", 200, "application/fhir+json"),
    ("application/fhir+json;q=0.5, application/fhir+xml", 200, "application/fhir+xml"),
    ("application/fhir+xml, application/fhir+json", 200, "application/fhir+xml"),
    ("text/html, */*;q=0.1", 200, "application/fhir+json"),
    ("image/png", 406, "application/fhir+json"),
    ("application/fhir+json; fhirVersion=3.0", 406, "application/fhir+json"),
    ("application/fhir+json; fhirVersion=4.0", 200, "application/fhir+json"),
])
def test_accept_header_qualities(http: httpx.Client, accept: str, status: int, media: str) -> None:
    answer = http.get("metadata", headers={"Accept": accept})
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith(media)
    if status == 406:
        assert answer.json()["resourceType"] == "OperationOutcome"


def test_format_parameter_overrides_accept(http: httpx.Client) -> None:
    assert http.get("metadata", params={"_format": "json"}, headers={"Accept": "image/png"}).status_code == 200
    assert http.get("metadata", headers={"Accept": "*/*"}).headers["content-type"].startswith("application/fhir+json")


@pytest.mark.parametrize("chained", ["subject.famly", "encounter.foo", "patient.famly", "subject:Patient.famly",
                                     "subject.organization.nam", "_has:Observation:patient:cod"])
def test_unknown_parameter_in_a_chain(http: httpx.Client, written: dict[str, Any], chained: str) -> None:
    """However a chain is spelled, a name no target defines is reported (lenient) or refused (strict)."""
    path = "Patient" if chained.startswith("_has") else "Observation"
    anchor = {"_id": written["pid"]} if path == "Patient" else {"code": "8867-4"}
    lenient = http.get(path, params={**anchor, chained: "Quokka"}).json()
    assert lenient["total"] == (1 if path == "Patient" else 4)
    assert f"search parameter {chained!r} ignored" in outcome_notes(lenient)
    assert http.get(path, params={**anchor, chained: "Quokka"}, headers=STRICT).status_code == 400


def test_chain_through_several_targets(http: httpx.Client, written: dict[str, Any]) -> None:
    """A parameter only some targets of the reference define (family: Patient, not Group) still chains."""
    found = http.get("Observation", params={"subject.family": "Quokka", "_sort": "_id"}, headers=STRICT).json()
    assert sorted(matches(found)) == sorted(written["oids"])


def test_reference_to_another_server(http: httpx.Client, written: dict[str, Any], observation: Any,
                                     server: tuple[Any, str]) -> None:
    foreign_url = f"http://other.example.org/fhir/Patient/{written['pid']}"
    foreign = observation(written["pid"], code="9279-1")
    foreign["subject"] = {"reference": foreign_url}
    foreign_id = http.post("Observation", json=foreign).json()["id"]
    asked = http.get("Observation", params={"subject": foreign_url}).json()
    assert matches(asked) == [foreign_id]
    own_url = f"{server[1]}/fhir/Patient/{written['pid']}"
    for value in (own_url, f"Patient/{written['pid']}"):
        local = http.get("Observation", params={"subject": value, "code": "8867-4"}).json()
        assert sorted(matches(local)) == sorted(written["oids"])
    posted = http.post("_search", data={"_type": "Observation", "subject": foreign_url}).json()
    assert matches(posted) == [foreign_id]
    # The other server's Patient with the same id is not this one: no local search or chain reaches it.
    for params in ({"subject": f"Patient/{written['pid']}"}, {"patient": written["pid"]},
                   {"subject.family": "Quokka"}, {"subject:Patient.family": "Quokka"}):
        assert foreign_id not in matches(http.get("Observation", params={**params, "_count": "100"}).json()), params
    included = http.get("Observation", params={"_id": foreign_id, "_include": "Observation:subject"}).json()
    assert matches(included) == [foreign_id] and len(included["entry"]) == 1


def test_patient_compartment_search(http: httpx.Client, written: dict[str, Any], observation: Any) -> None:
    """``Patient/id/Observation`` holds what references the patient through any compartment parameter
    (subject, performer), with paging links that stay in the compartment."""
    performed = observation(written["other"], code="8867-4")
    performed["performer"] = [{"reference": f"Patient/{written['pid']}"}]
    performed_id = http.post("Observation", json=performed).json()["id"]
    expected = sorted([*written["oids"], performed_id])
    pages, bundle = [], http.get(f"Patient/{written['pid']}/Observation",
                                 params={"code": "8867-4", "_count": "2"}).json()
    assert bundle["total"] == 4
    while True:
        pages += matches(bundle)
        link = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
        if link is None:
            break
        assert f"/fhir/Patient/{written['pid']}/Observation?" in link
        bundle = httpx.get(link).json()
    assert sorted(pages) == expected
    posted = http.post(f"Patient/{written['pid']}/Observation/_search", data={"code": "8867-4"}).json()
    assert sorted(matches(posted)) == expected
    assert matches(http.get(f"Patient/{written['pid']}/Patient").json()) == [written["pid"]]
    assert http.get(f"Patient/{written['pid']}/Practitioner").status_code == 400
    assert http.get("Patient/no-such-patient/Observation").status_code == 404


def test_metadata_advertises_only_what_is_served(http: httpx.Client) -> None:
    resources = {r["type"]: r for r in http.get("metadata").json()["rest"][0]["resource"]}
    assert "SubscriptionStatus" not in resources and "ViewDefinition" not in resources
    assert "Patient" in resources and "Binary" in resources
    assert {"name": "near", "type": "special"} in resources["Location"]["searchParam"]
    refused = http.get("Location", params={"near": "91|0"})
    assert refused.status_code == 400 and refused.json()["issue"][0]["expression"] == ["near"]
    view = {"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
            "select": [{"column": [{"name": "id", "path": "id"}]}]}
    run = http.post("ViewDefinition/$run", json={"resourceType": "Parameters",
                                                  "parameter": [{"name": "viewResource", "resource": view}]})
    assert run.status_code == 200


@pytest.mark.parametrize(("path", "name", "value"), [
    ("Observation", "_include", "Observation:foo"),
    ("Observation", "_include", "Observation:status"),
    ("Observation", "_include", "Observation:subject:Medication"),
    ("Observation", "_include:iterate", "Nothing:subject"),
    ("Patient", "_revinclude", "Observation:foo"),
    ("", "_include", "Observation:status"),
])
def test_include_that_cannot_be_followed(http: httpx.Client, written: dict[str, Any], path: str, name: str,
                                         value: str) -> None:
    anchor = {"_id": written["pid"]} if path == "Patient" else {"_id": written["oids"][0]}
    if not path:
        anchor["_type"] = "Observation"
    lenient = http.get(path, params={**anchor, name: value}).json()
    assert lenient["total"] == 1
    assert f"search parameter '{name}={value}' ignored" in outcome_notes(lenient)
    assert name not in lenient["link"][0]["url"]
    strict = http.get(path, params={**anchor, name: value}, headers=STRICT)
    assert strict.status_code == 400 and value in strict.json()["issue"][0]["diagnostics"]


def test_include_that_can_be_followed(http: httpx.Client, written: dict[str, Any]) -> None:
    found = http.get("Observation", params={"_id": written["oids"][0], "_include": "Observation:subject:Patient"},
                     headers=STRICT).json()
    assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "include"] == [written["pid"]]
