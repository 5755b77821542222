"""FHIR search over the index, checked against answers computed directly from the source JSON."""

from __future__ import annotations

from datetime import datetime

import pytest

from store.search import SearchError, SearchRequest, search
from store.store import Store

PID = "0e61c3ad-d11e-4080-a6aa-cac89cae4e37"


@pytest.fixture(autouse=True, params=["in-memory", "columns", "sql"])
def search_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on each path: the in-memory caches (patients, small types), the type columns
    first wherever they can answer (every type and patient count treated as large), and DuckDB alone."""
    import store.search as search_module
    import store.type_columns as type_columns

    monkeypatch.setattr(search_module, "IN_MEMORY", request.param != "sql")
    if request.param == "columns":
        monkeypatch.setattr(type_columns, "MAX_TYPE_RESOURCES", 0)
        monkeypatch.setattr(type_columns, "QUIET_S", 0.0)
        monkeypatch.setattr(type_columns, "QUIET_LOADS", 0.0)
        monkeypatch.setattr(type_columns, "LOAD_IN_BACKGROUND", False)
        monkeypatch.setattr(search_module, "COLUMNS_MIN_PATIENTS", 1)
    return request.param


def ids(store: Store, rtype: str, params: list[tuple[str, str]], count: int = 10_000, **kw) -> set[str]:
    res = search(store, SearchRequest(rtype, params, count=count, **kw))
    return {i for _, i in res.keys}


def codes(res: dict) -> set[str]:
    return {c.get("code") for c in res.get("code", {}).get("coding", [])}


def of_type(resources: list[dict], rtype: str) -> list[dict]:
    return [r for r in resources if r["resourceType"] == rtype]


def test_reference_and_token(synthea_store: Store, synthea_resources: list[dict]) -> None:
    expected = {
        o["id"] for o in of_type(synthea_resources, "Observation")
        if o["subject"]["reference"] == f"Patient/{PID}" and "4548-4" in codes(o)
    }
    assert len(expected) == 18
    assert ids(synthea_store, "Observation", [("subject", f"Patient/{PID}"), ("code", "http://loinc.org|4548-4")]) == expected
    assert ids(synthea_store, "Observation", [("patient", PID), ("code", "4548-4")]) == expected
    assert ids(synthea_store, "Observation", [("subject:Patient", PID), ("code", "http://snomed.info/sct|4548-4")]) == set()


def test_or_list_and_and_repeat(synthea_store: Store, synthea_resources: list[dict]) -> None:
    obs = of_type(synthea_resources, "Observation")
    either = {o["id"] for o in obs if codes(o) & {"4548-4", "2339-0"}}
    assert ids(synthea_store, "Observation", [("code", "4548-4,2339-0")]) == either
    assert ids(synthea_store, "Observation", [("code", "4548-4"), ("code", "2339-0")]) == set()


def test_date_prefixes_follow_ranges(synthea_store: Store, synthea_resources: list[dict]) -> None:
    obs = [o for o in of_type(synthea_resources, "Observation") if "4548-4" in codes(o)]
    year = lambda o: int(o["effectiveDateTime"][:4])  # noqa: E731
    assert ids(synthea_store, "Observation", [("code", "4548-4"), ("date", "ge2015")]) == {
        o["id"] for o in obs if year(o) >= 2015
    }
    assert ids(synthea_store, "Observation", [("code", "4548-4"), ("date", "lt2015")]) == {
        o["id"] for o in obs if year(o) < 2015
    }
    assert ids(synthea_store, "Observation", [("code", "4548-4"), ("date", "2015")]) == {
        o["id"] for o in obs if year(o) == 2015
    }
    month = "2016-03"
    assert ids(synthea_store, "Observation", [("code", "4548-4"), ("date", month)]) == {
        o["id"] for o in obs if o["effectiveDateTime"].startswith(month)
    }


def test_encounter_period_overlap_and_containment(synthea_store: Store, synthea_resources: list[dict]) -> None:
    enc = of_type(synthea_resources, "Encounter")
    day = "2015-03-10"
    expected = {e["id"] for e in enc if e["period"]["start"][:10] == day and e["period"]["end"][:10] == day}
    assert ids(synthea_store, "Encounter", [("date", day)]) == expected


def test_quantity_with_unit_conversion(synthea_store: Store, synthea_resources: list[dict]) -> None:
    glucose = [o for o in of_type(synthea_resources, "Observation") if "2339-0" in codes(o)]
    assert all(o["valueQuantity"]["code"] == "mg/dL" for o in glucose)
    # 5.5 mmol/L with its precision is [5.45, 5.55) mmol/L = [98.19, 99.99) mg/dL for glucose.
    lo, hi = 5.45 * 18.016, 5.55 * 18.016
    expected = {o["id"] for o in glucose if lo <= o["valueQuantity"]["value"] < hi}
    assert expected
    got = ids(synthea_store, "Observation", [("code", "2339-0"), ("value-quantity", "5.5|http://unitsofmeasure.org|mmol/L")])
    assert got == expected
    gt = {o["id"] for o in glucose if o["valueQuantity"]["value"] > 100}
    assert ids(synthea_store, "Observation", [("code", "2339-0"), ("value-quantity", "gt100|http://unitsofmeasure.org|mg/dL")]) == gt
    assert ids(synthea_store, "Observation", [("code", "2339-0"), ("value-quantity", "gt0.1|http://unitsofmeasure.org|g/dL")]) == gt


def test_string_modifiers(synthea_store: Store, synthea_resources: list[dict]) -> None:
    patients = of_type(synthea_resources, "Patient")
    fam = patients[0]["name"][0]["family"]
    assert ids(synthea_store, "Patient", [("family:exact", fam)]) == {
        p["id"] for p in patients if any(n.get("family") == fam for n in p["name"])
    }
    assert ids(synthea_store, "Patient", [("family", fam[:3].upper())]) == {
        p["id"] for p in patients if any(n.get("family", "").lower().startswith(fam[:3].lower()) for n in p["name"])
    }
    assert ids(synthea_store, "Patient", [("family:contains", fam[1:4].lower())]) == {
        p["id"] for p in patients if any(fam[1:4].lower() in n.get("family", "").lower() for n in p["name"])
    }


def test_chaining_and_reverse_chaining(synthea_store: Store, synthea_resources: list[dict]) -> None:
    patients = {p["id"]: p for p in of_type(synthea_resources, "Patient")}
    female = {pid for pid, p in patients.items() if p["gender"] == "female"}
    hba1c = [o for o in of_type(synthea_resources, "Observation") if "4548-4" in codes(o)]
    expected = {o["id"] for o in hba1c if o["subject"]["reference"].split("/")[1] in female}
    assert ids(synthea_store, "Observation", [("code", "4548-4"), ("subject:Patient.gender", "female")]) == expected
    assert ids(synthea_store, "Observation", [("code", "4548-4"), ("patient.gender", "female")]) == expected
    with_cond = {
        c["subject"]["reference"].split("/")[1] for c in of_type(synthea_resources, "Condition")
        if any(cd["code"] == "44054006" for cd in c["code"]["coding"])
    }
    assert with_cond
    assert ids(synthea_store, "Patient", [("_has:Condition:patient:code", "44054006")]) == with_cond


def test_token_modifiers_and_missing(synthea_store: Store, synthea_resources: list[dict]) -> None:
    obs = of_type(synthea_resources, "Observation")
    assert ids(synthea_store, "Observation", [("status:not", "final")]) == {o["id"] for o in obs if o["status"] != "final"}
    text_hits = {o["id"] for o in obs if "glucose" in o["code"].get("text", "").lower()
                 or any("glucose" in c.get("display", "").lower() for c in o["code"]["coding"])}
    assert ids(synthea_store, "Observation", [("code:text", "Glucose")]) == text_hits
    no_value = {o["id"] for o in obs if "valueQuantity" not in o and not any(
        "valueQuantity" in c for c in o.get("component", []))}
    assert ids(synthea_store, "Observation", [("combo-value-quantity:missing", "true")]) == no_value


def test_sort_and_stable_paging(synthea_store: Store, synthea_resources: list[dict]) -> None:
    obs = sorted(
        (o for o in of_type(synthea_resources, "Observation") if o["subject"]["reference"] == f"Patient/{PID}"
         and "4548-4" in codes(o)),
        key=lambda o: o["effectiveDateTime"], reverse=True,
    )
    params = [("patient", PID), ("code", "4548-4"), ("_sort", "-date")]
    pages = [search(synthea_store, SearchRequest("Observation", params, count=5, offset=k)) for k in (0, 5, 10, 15)]
    got = [i for p in pages for _, i in p.keys]
    assert got == [o["id"] for o in obs]
    assert pages[0].total == 18
    births = sorted(of_type(synthea_resources, "Patient"), key=lambda p: p["birthDate"])
    first = search(synthea_store, SearchRequest("Patient", [("_sort", "birthdate")], count=3)).keys
    assert [i for _, i in first] == [p["id"] for p in births[:3]]


def test_include_and_revinclude(synthea_store: Store) -> None:
    res = search(synthea_store, SearchRequest("Observation", [("patient", PID), ("code", "4548-4"),
                                                               ("_include", "Observation:patient")], count=3))
    assert res.included == [("Patient", PID)]
    rev = search(synthea_store, SearchRequest("Patient", [("_id", PID), ("_revinclude", "Observation:subject")]))
    assert rev.keys == [("Patient", PID)]
    assert len(rev.included) == synthea_store.cursor().execute(
        "SELECT count(*) FROM resources WHERE resource_type = 'Observation' AND patient_id = ?", [PID]
    ).fetchone()[0]


def test_total_modes_and_summary_count(synthea_store: Store) -> None:
    assert search(synthea_store, SearchRequest("Patient", [("_total", "none")])).total is None
    res = search(synthea_store, SearchRequest("Patient", [("_summary", "count")]))
    assert res.summary_count and res.total == 37 and res.keys == []


def test_unknown_parameters_strict_and_lenient(synthea_store: Store) -> None:
    res = search(synthea_store, SearchRequest("Patient", [("shoe-size", "42")]))
    assert res.ignored == ["shoe-size"] and res.total == 37
    with pytest.raises(SearchError) as err:
        search(synthea_store, SearchRequest("Patient", [("shoe-size", "42")], strict=True))
    assert err.value.param == "shoe-size"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("birthdate", "not-a-date")], "invalid date"),
        ([("value-quantity", "abc")], "invalid number"),
        ([("family:below", "x")], "modifier"),
        ([("_count", "-1")], "_count"),
    ],
)
def test_bad_values_are_clear_errors(synthea_store: Store, params: list, message: str) -> None:
    rtype = "Observation" if params[0][0] == "value-quantity" else "Patient"
    with pytest.raises(SearchError) as err:
        search(synthea_store, SearchRequest(rtype, params))
    assert message in str(err.value)


def test_last_updated(synthea_store: Store) -> None:
    now = datetime.now().strftime("%Y")
    assert len(ids(synthea_store, "Patient", [("_lastUpdated", f"ge{now}")])) == 37
    assert ids(synthea_store, "Patient", [("_lastUpdated", "lt2000")]) == set()


def test_patient_clustering_changes_no_answer(synthea_resources: list[dict]) -> None:
    """Searches anchored on a patient use the clustered layout; answers must not change after optimize()."""
    store = Store(":memory:")
    store.write([dict(r) for r in synthea_resources if r["resourceType"] in ("Patient", "Observation", "Encounter")])
    queries = [
        ("Observation", [("patient", PID), ("code", "4548-4"), ("date", "ge2015"), ("_sort", "-date")]),
        ("Observation", [("subject", f"Patient/{PID}"), ("_include", "Observation:encounter")]),
        ("Observation", [("subject:Patient", PID), ("combo-code", "8480-6")]),
        ("Encounter", [("patient", PID), ("date", "lt2016")]),
        ("Observation", [("code", "4548-4"), ("subject:Patient.gender", "female")]),
    ]

    def answers() -> list:
        out = []
        for rtype, params in queries:
            res = search(store, SearchRequest(rtype, params, count=1000))
            out.append((res.total, res.keys, res.included))
        return out

    before = answers()
    assert before[0][0] > 0 and before[1][2]
    store.optimize()
    assert store.unclustered_rows() == 0
    assert answers() == before
    store.close()


def test_chain_off_the_patient_anchor_runs_in_sql(synthea_store: Store, synthea_resources: list[dict]) -> None:
    finished = {e["id"] for e in of_type(synthea_resources, "Encounter") if e["status"] == "finished"}
    expected = {
        o["id"] for o in of_type(synthea_resources, "Observation")
        if "4548-4" in codes(o) and o.get("encounter", {}).get("reference", "").split("/")[-1] in finished
    }
    assert expected
    assert ids(synthea_store, "Observation", [("code", "4548-4"), ("encounter.status", "finished")]) == expected
    assert ids(synthea_store, "Observation", [("code", "4548-4"), ("encounter.status", "planned")]) == set()


@pytest.mark.parametrize("params", [
    [("code", "4548-4")],
    [("code", "4548-4,2339-0"), ("date", "ge2014"), ("_sort", "-_lastUpdated,_id")],
    [("patient", PID), ("status", "final")],
    [("subject:Patient.gender", "female"), ("code", "8302-2"), ("_sort", "_id")],
    [("_has:Observation:patient:code", "4548-4")],
])
def test_index_only_answers_equal_the_sql_page(synthea_store: Store, params: list[tuple[str, str]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import store.search as search_module

    rtype = "Patient" if params[0][0].startswith("_has") else "Observation"
    pages = []
    for limit in (search_module.MAX_INDEX_ONLY, -1):  # -1: every search takes the SQL page
        monkeypatch.setattr(search_module, "MAX_INDEX_ONLY", limit)
        monkeypatch.setattr(search_module, "IN_MEMORY", False)
        res = [search(synthea_store, SearchRequest(rtype, params, count=7, offset=off)) for off in (0, 7)]
        pages.append([(r.total, r.keys) for r in res])
    assert pages[0] == pages[1] and pages[0][0][0] > 0


def test_index_only_skips_deleted_resources(synthea_resources: list[dict]) -> None:
    obs = [o for o in of_type(synthea_resources, "Observation") if "4548-4" in codes(o)][:5]
    with Store(":memory:") as store:
        store.write([dict(o) for o in obs])
        store.delete("Observation", obs[0]["id"])
        res = search(store, SearchRequest("Observation", [("code", "4548-4")]))
        assert res.total == 4 and ("Observation", obs[0]["id"]) not in res.keys


def _component_values(o: dict) -> list[tuple[str, float]]:
    return [(c["code"]["coding"][0]["code"], c["valueQuantity"]["value"])
            for c in o.get("component", []) if "valueQuantity" in c]


@pytest.mark.parametrize("param", ["component-code-value-quantity", "combo-code-value-quantity"])
def test_composite_components_hold_on_the_same_element(synthea_store: Store, synthea_resources: list[dict],
                                                       param: str) -> None:
    bp = [o for o in of_type(synthea_resources, "Observation") if "55284-4" in codes(o)]
    assert bp
    high_diastolic = {o["id"] for o in bp if any(c == "8462-4" and v > 100 for c, v in _component_values(o))}
    high_systolic = {o["id"] for o in bp if any(c == "8480-6" and v > 100 for c, v in _component_values(o))}
    any_above = {o["id"] for o in bp if any(v > 100 for _, v in _component_values(o))}
    assert high_systolic and any_above - high_diastolic  # the over-match a per-component index would make
    assert ids(synthea_store, "Observation", [(param, "8462-4$gt100")]) == high_diastolic
    assert ids(synthea_store, "Observation", [(param, "http://loinc.org|8480-6$gt100")]) == high_systolic
    either = ids(synthea_store, "Observation", [(param, "8462-4$gt100,8480-6$gt100")])
    assert either == high_diastolic | high_systolic
    # the panel's own code with a component's value is not one element
    assert ids(synthea_store, "Observation", [(param, "55284-4$gt100")]) == set()
    page = search(synthea_store, SearchRequest("Observation", [(param, "8480-6$gt100"), ("_sort", "-date")], count=3))
    assert page.total == len(high_systolic) and len(page.keys) == 3


def test_composite_inside_has_stays_per_component(synthea_store: Store, synthea_resources: list[dict]) -> None:
    res = search(synthea_store, SearchRequest(
        "Patient", [("_has:Observation:patient:component-code-value-quantity", "8480-6$gt100")]))
    expected = {o["subject"]["reference"].split("/")[1] for o in of_type(synthea_resources, "Observation")
                if any(c == "8480-6" and v > 100 for c, v in _component_values(o))}
    assert {i for _, i in res.keys} >= expected


def test_references_are_local_when_relative_and_values_on_this_base_are_made_relative() -> None:
    """A stored absolute URL names another server's resource: only a search for that URL finds it, not
    ``Type/id``, a chain or ``_include``. A value on this server's base is the relative reference,
    at the end of a chain too."""
    base = "http://me.example/fhir"
    s = Store()
    s.write([
        {"resourceType": "Organization", "id": "o1", "name": "Org"},
        {"resourceType": "Patient", "id": "p1", "name": [{"family": "Local"}],
         "managingOrganization": {"reference": "Organization/o1"}},
        {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"}},
        *({"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"{prefix}Patient/p1"}, "encounter": {"reference": f"{prefix}Encounter/e1"}}
          for oid, prefix in (("local", ""), ("foreign", "http://other.example/fhir/"))),
    ])
    for params in ([("subject", "Patient/p1")], [("encounter", "Encounter/e1")], [("encounter", f"{base}/Encounter/e1")],
                   [("subject.family", "Local")], [("encounter.status", "finished")],
                   [("subject.organization", f"{base}/Organization/o1")],
                   [("subject:Patient.organization", f"{base}/Organization/o1")]):
        assert ids(s, "Observation", params, base=base) == {"local"}, params
    assert ids(s, "Observation", [("encounter", "http://other.example/fhir/Encounter/e1")], base=base) == {"foreign"}
    assert ids(s, "Patient", [("_has:Observation:subject:encounter", f"{base}/Encounter/e1")], base=base) == {"p1"}
    included = search(s, SearchRequest("Observation", [("_id", "foreign"), ("_include", "Observation:subject")]))
    assert [k[1] for k in included.keys] == ["foreign"] and not included.included


def _great_circle_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance on the IUGG mean sphere, computed here apart from the SQL."""
    import math

    (lat1, lon1), (lat2, lon2) = [(math.radians(x), math.radians(y)) for x, y in (a, b)]
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def test_location_near_selects_positions_within_the_distance() -> None:
    import random

    boston = (42.3601, -71.0589)
    places = {"boston": boston, "cambridge": (42.3736, -71.1097), "nyc": (40.7128, -74.0060)}
    rng = random.Random(7)
    places |= {f"r{i}": (boston[0] + rng.uniform(-3, 3), boston[1] + rng.uniform(-3, 3)) for i in range(60)}
    s = Store()
    s.write([{"resourceType": "Location", "id": k, "position": {"latitude": lat, "longitude": lon}}
             for k, (lat, lon) in places.items()] + [{"resourceType": "Location", "id": "nowhere", "name": "x"}])
    point = "42.3601|-71.0589"
    assert ids(s, "Location", [("near", f"{point}|1|km")]) == {"boston"}
    assert ids(s, "Location", [("near", point)]) == {"boston", "cambridge"}  # the default: 10 km
    assert "nyc" in ids(s, "Location", [("near", f"{point}|200|[mi_i]")])  # ~306 km
    assert "nyc" not in ids(s, "Location", [("near", f"{point}|180|[mi_i]")])
    for meters in (5_000, 50_000, 150_000, 300_000):
        expected = {k for k, p in places.items() if _great_circle_m(boston, p) <= meters}
        assert ids(s, "Location", [("near", f"{point}|{meters}|m")]) == expected, meters
        assert ids(s, "Location", [("near", f"{point}|{meters / 1000}")]) == expected, meters
    assert ids(s, "Location", [("near", f"0|0|1|km,{point}|1|km")]) == {"boston"}  # an OR of points


@pytest.mark.parametrize(("value", "problem"), [
    ("42.3", "latitude|longitude"), ("north|-71", "latitude must be a number"), ("91|0", "within ±90"),
    ("42|-71|far", "distance must be a number"), ("42|-71|5|kg", "not a UCUM unit of length"),
    ("42|-71|-5|km", "must not be negative"),
])
def test_a_malformed_near_is_refused_saying_why(value: str, problem: str) -> None:
    with pytest.raises(SearchError, match=problem) as refused:
        ids(Store(), "Location", [("near", value)])
    assert refused.value.param == "near"
