"""Search across types (``GET [base]?…``, ``POST [base]/_search``) and type/system-level ``$meta``,
checked over HTTP against what was written."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


@pytest.fixture(scope="module")
def written(http: httpx.Client, patient: Any, observation: Any) -> dict[str, Any]:
    p = patient("Systemsearch")
    p["meta"] = {"tag": [{"system": "urn:tags", "code": "cohort-a"}], "profile": ["http://example.org/p"]}
    pid = http.post("Patient", json=p).json()["id"]
    obs = [observation(pid, value=v) for v in (60, 70, 80)]
    obs[0]["meta"] = {"tag": [{"system": "urn:tags", "code": "cohort-a"}],
                      "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                    "code": "R"}]}
    oids = [http.post("Observation", json=o).json()["id"] for o in obs]
    return {"pid": pid, "oids": oids}


def keys(bundle: dict) -> list[tuple[str, str]]:
    return [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode") == "match"]


def test_tag_across_types(http: httpx.Client, written: dict[str, Any]) -> None:
    found = http.get("", params={"_tag": "urn:tags|cohort-a"})
    assert found.status_code == 200
    bundle = found.json()
    assert bundle["type"] == "searchset" and bundle["total"] == 2
    assert set(keys(bundle)) == {("Patient", written["pid"]), ("Observation", written["oids"][0])}
    assert bundle["link"][0]["url"].split("?")[0].endswith("/fhir")


def test_type_list_paging_and_sort(http: httpx.Client, written: dict[str, Any]) -> None:
    ids = {written["pid"], *written["oids"]}
    pages, url = [], None
    params = {"_type": "Patient,Observation", "_id": ",".join(sorted(ids)), "_count": "2",
              "_sort": "-_lastUpdated"}
    first = http.get("", params=params).json()
    assert first["total"] == 4
    bundle = first
    while True:
        pages += keys(bundle)
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if url is None:
            break
        bundle = httpx.get(url).json()
    assert [i for _, i in pages] == [*reversed(written["oids"]), written["pid"]]
    posted = http.post("_search", data={"_type": "Observation", "_id": ",".join(sorted(ids))})
    assert posted.status_code == 200 and posted.json()["total"] == 3


def test_parameters_not_common_to_the_types(http: httpx.Client, written: dict[str, Any]) -> None:
    lenient = http.get("", params={"_type": "Patient,Observation", "code": "8867-4", "_id": written["pid"]})
    assert lenient.status_code == 200 and keys(lenient.json()) == [("Patient", written["pid"])]
    assert "code" not in lenient.json()["link"][0]["url"]
    strict = http.get("", params={"_type": "Patient,Observation", "code": "8867-4"},
                      headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and strict.json()["resourceType"] == "OperationOutcome"
    common = http.get("", params={"_type": "Observation", "code": "8867-4", "value-quantity": "gt65"})
    assert {i for _, i in keys(common.json())} == set(written["oids"][1:])
    assert http.get("", params={"_type": "NoSuchType"}).status_code == 400
    assert http.get("", params={"_sort": "birthdate"}).status_code == 400


def test_include_on_the_merged_page(http: httpx.Client, written: dict[str, Any]) -> None:
    bundle = http.get("", params={"_type": "Observation", "_id": written["oids"][1],
                                  "_include": "Observation:subject"}).json()
    included = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]
                if e["search"]["mode"] == "include"]
    assert included == [("Patient", written["pid"])]


def test_meta_at_type_and_system_level(http: httpx.Client, written: dict[str, Any]) -> None:
    def meta(path: str) -> dict:
        body = http.get(path).json()
        assert body["resourceType"] == "Parameters"
        return body["parameter"][0]["valueMeta"]

    system = meta("$meta")
    assert {"system": "urn:tags", "code": "cohort-a"} in system["tag"]
    assert "http://example.org/p" in system["profile"]
    assert system["security"][0]["code"] == "R"
    observations = meta("Observation/$meta")
    assert "profile" not in observations and observations["tag"] == [{"system": "urn:tags", "code": "cohort-a"}]
    assert http.get("NoSuchType/$meta").status_code in (400, 404)


def test_capability_statement_lists_system_search(http: httpx.Client) -> None:
    rest = http.get("metadata").json()["rest"][0]
    assert {"code": "search-system"} in rest["interaction"]
    assert "_type" in {p["name"] for p in rest["searchParam"]}
    assert [op["name"] for op in rest["operation"]] == ["meta"]
