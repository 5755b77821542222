"""The in-memory patient search answers exactly what the SQL search answers, and stays coherent with writes."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import store.search as search_module
from store.search import SearchRequest, search
from store.store import Store

PID = "0e61c3ad-d11e-4080-a6aa-cac89cae4e37"
OTHER = "1ac8947d-038f-4cc7-81fa-a32e694187e8"

CODES = ["4548-4", "8480-6", "2339-0", "8302-2", "29463-7", "72514-3", "http://loinc.org|4548-4",
         "http://snomed.info/sct|4548-4", "|8302-2", "http://loinc.org|"]
DATES = ["2015", "ge2015", "lt2014-06", "le2016-03-01", "gt2012-02-13T07:36:34+00:00", "ne2015", "sa2013",
         "eb2016", "ap2015-06"]
QUANTITIES = ["gt6|http://unitsofmeasure.org|%", "5.5|http://unitsofmeasure.org|mmol/L", "ge100", "lt80",
              "ap100|http://unitsofmeasure.org|mg/dL", "gt0.1|http://unitsofmeasure.org|g/dL"]
SORTS = ["", "date", "-date", "code", "-value-quantity", "_id", "-_lastUpdated", "status,-date"]


def both(store: Store, rtype: str, params: list[tuple[str, str]], count: int = 7, offset: int = 0) -> tuple:
    fast = search(store, SearchRequest(rtype, params, count=count, offset=offset))
    search_module.IN_MEMORY = False
    try:
        slow = search(store, SearchRequest(rtype, params, count=count, offset=offset))
    finally:
        search_module.IN_MEMORY = True
    return (fast.total, fast.keys, fast.included), (slow.total, slow.keys, slow.included)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])
@given(
    patient=st.sampled_from([f"Patient/{PID}", PID, f"{PID},{OTHER}", f"Patient/{OTHER}"]),
    code=st.none() | st.sampled_from(CODES),
    date=st.none() | st.sampled_from(DATES),
    qty=st.none() | st.sampled_from(QUANTITIES),
    status=st.none() | st.sampled_from(["final", "amended", "final,amended"]),
    negate=st.booleans(),
    sort=st.sampled_from(SORTS),
    include=st.booleans(),
    offset=st.integers(0, 12),
)
def test_fast_path_equals_sql(store: Store, patient: str, code: str | None, date: str | None, qty: str | None,
                              status: str | None, negate: bool, sort: str, include: bool, offset: int) -> None:
    params = [("subject" if patient.startswith("Patient/") else "patient", patient)]
    for name, value in (("code", code), ("date", date), ("value-quantity", qty)):
        if value is not None:
            params.append((name, value))
    if status:
        params.append(("status:not" if negate else "status", status))
    if sort:
        params.append(("_sort", sort))
    if include:
        params.append(("_include", "Observation:encounter"))
    fast, slow = both(store, "Observation", params, offset=offset)
    assert fast == slow


def test_encounter_dates_and_string_params(store: Store) -> None:
    for params in ([("patient", PID), ("date", "ge2014")], [("subject", f"Patient/{PID}"), ("class", "AMB")],
                   [("patient", PID), ("_sort", "-date"), ("type:not", "x")]):
        fast, slow = both(store, "Encounter", params, count=50)
        assert fast == slow and fast[0] > 0


def test_cache_sees_writes_at_once(store: Store) -> None:
    params = [("patient", PID), ("code", "4548-4")]
    before = search(store, SearchRequest("Observation", params, count=100))
    obs = copy.deepcopy(store.read("Observation", before.keys[0][1]))
    obs.pop("meta")
    obs["id"] = "cache-probe"
    store.write([obs])
    after = search(store, SearchRequest("Observation", params, count=100))
    assert after.total == before.total + 1 and ("Observation", "cache-probe") in after.keys
    store.delete("Observation", "cache-probe")
    again = search(store, SearchRequest("Observation", params, count=100))
    assert again.total == before.total


def test_chains_into_patient_resolve_to_the_patients_they_find(store: Store, synthea_resources: list[dict]) -> None:
    patients = [r for r in synthea_resources if r["resourceType"] == "Patient"]
    family = patients[0]["name"][0]["family"]
    named = {p["id"] for p in patients if any(n.get("family", "").lower().startswith(family.lower()) for n in p["name"])}
    expected = {
        o["id"] for o in synthea_resources if o["resourceType"] == "Observation"
        and o["subject"]["reference"].split("/")[1] in named
    }
    params = [("subject:Patient.name", family), ("_count", "10000")]
    fast, slow = both(store, "Observation", params, count=10_000)
    assert fast == slow
    assert {i for _, i in fast[1]} == expected and fast[0] == len(expected) > 0
    nobody = search(store, SearchRequest("Observation", [("patient.name", "zz-no-such-family")]))
    assert nobody.total == 0 and nobody.keys == []
    counted = search(store, SearchRequest("Observation", [("patient.name", "zz-no-such-family"), ("_summary", "count")]))
    assert counted.total == 0 and counted.summary_count


NAMES = ["a", "Ma", "mar", "Ó", "zz", "Ledner", "Kristin", "O'", "ra", "Bosco"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(
    param=st.sampled_from(["name", "family", "given", "address-city", "name:exact", "name:contains", "phonetic"]),
    value=st.sampled_from(NAMES) | st.lists(st.sampled_from(NAMES), min_size=2, max_size=3).map(",".join),
    gender=st.none() | st.sampled_from(["female", "male"]),
    sort=st.sampled_from(["", "_id", "-_lastUpdated", "birthdate", "-family"]),
    offset=st.integers(0, 5),
)
def test_small_type_search_equals_sql(store: Store, param: str, value: str, gender: str | None, sort: str,
                                      offset: int) -> None:
    params = [(param, value)] + ([("gender", gender)] if gender else []) + ([("_sort", sort)] if sort else [])
    fast, slow = both(store, "Patient", params, count=4, offset=offset)
    assert fast == slow


def test_type_entries_see_writes_at_once(store: Store, synthea_resources: list[dict]) -> None:
    patient = copy.deepcopy(next(r for r in synthea_resources if r["resourceType"] == "Patient"))
    patient["id"] = "type-cache-probe"
    patient["name"] = [{"family": "Zyxwvut", "given": ["Probe"]}]
    assert search(store, SearchRequest("Patient", [("family", "zyx")])).total == 0
    store.write([patient])
    found = search(store, SearchRequest("Patient", [("family", "zyx")]))
    assert found.keys == [("Patient", "type-cache-probe")]
    store.delete("Patient", "type-cache-probe")
    assert search(store, SearchRequest("Patient", [("family", "zyx")])).total == 0


def test_writes_invalidate_loads_in_flight(store: Store, synthea_resources: list[dict]) -> None:
    """A load that started before a write must not be cached, even when nothing was cached yet."""
    from store.patient_cache import cache_for

    cache = cache_for(store)
    obs = copy.deepcopy(next(r for r in synthea_resources if r["resourceType"] == "Observation"
                             and r["subject"]["reference"] == f"Patient/{OTHER}"))
    obs.pop("meta", None)
    obs["id"] = "in-flight-probe"
    cache._entries.clear()
    cache._types.clear()
    stamps = (cache._type_generation.get("Observation", 0), cache._generation.get(OTHER, 0))
    store.write([obs])
    after_write = (cache._type_generation.get("Observation", 0), cache._generation.get(OTHER, 0))
    assert after_write[0] > stamps[0] and after_write[1] > stamps[1]
    cache._entries.clear()
    store.delete("Observation", "in-flight-probe")  # the tombstone names no patient: the version before does
    assert cache._generation.get(OTHER, 0) > after_write[1]


def test_in_memory_search_never_touches_duckdb(store: Store) -> None:
    from store.patient_cache import cache_for
    from store.search import search_in_memory

    params = [("patient", OTHER), ("code", "8302-2"), ("_sort", "-date")]
    cache_for(store)._entries.pop(OTHER, None)
    assert search_in_memory(store, SearchRequest("Observation", params)) is None  # patient not cached
    full = search(store, SearchRequest("Observation", params))  # loads the patient
    quick = search_in_memory(store, SearchRequest("Observation", params))
    assert quick is not None and (quick.total, quick.keys) == (full.total, full.keys) and full.total > 0
    # rows this patient has not loaded yet, a chain, a bad value: each needs the full search
    assert search_in_memory(store, SearchRequest("Observation", [("patient", OTHER), ("value-string", "x")])) is None
    chained = SearchRequest("Observation", [("patient.name", "a"), ("code", "8302-2")])
    cache_for(store)._types.pop("Patient", None)
    assert search_in_memory(store, chained) is None  # the chain's Patient search is not cached
    full_chain = search(store, chained)
    quick_chain = search_in_memory(store, chained)
    assert quick_chain is not None and (quick_chain.total, quick_chain.keys) == (full_chain.total, full_chain.keys)
    assert search_in_memory(store, SearchRequest("Observation", [("patient", OTHER), ("date", "nonsense")])) is None
    included = [("patient", OTHER), ("code", "8302-2"), ("_include", "Observation:encounter")]
    assert search_in_memory(store, SearchRequest("Observation", included)) is None  # encounter rows not loaded
    assert search(store, SearchRequest("Observation", included)).included
    assert search_in_memory(store, SearchRequest("Observation", included)).included
    cache_for(store)._types.pop("Patient", None)
    assert search_in_memory(store, SearchRequest("Patient", [("family", "a")])) is None  # type not cached


def test_last_updated_filters_equal_sql(store: Store) -> None:
    """``_lastUpdated`` has no index rows: the patient cache reads the commit times it holds, with the
    range of the instant the store renders, and answers what SQL answers from the resources' column."""
    written = store.write([{"resourceType": "Observation", "id": f"lu{k}", "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                            "subject": {"reference": f"Patient/{PID}"}} for k in range(3)])
    instant = store.read("Observation", "lu1")["meta"]["lastUpdated"]  # type: ignore[index]
    later = written[0].last_updated.year + 1
    for value in (instant, f"eq{instant}", f"ne{instant}", f"ge{instant}", f"lt{instant}", f"gt{instant}",
                  instant[:19] + "Z", instant[:10], f"lt{later}", f"ge{later}"):
        fast, slow = both(store, "Observation", [("patient", PID), ("_lastUpdated", value)], count=500)
        assert fast == slow, value
    fast, _ = both(store, "Observation", [("patient", PID), ("_lastUpdated", instant)])
    assert ("Observation", "lu1") in fast[1]
