"""Searches across a whole type from its columns answer exactly what SQL answers, and stay coherent with writes."""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import store.search as search_module
import store.type_columns as type_columns
from store.patient_cache import Unsupported, prepare
from store.search import SearchRequest, search, search_in_memory
from store.store import Store

PID = "0e61c3ad-d11e-4080-a6aa-cac89cae4e37"
OTHER = "1ac8947d-038f-4cc7-81fa-a32e694187e8"
CODES = ["4548-4", "8480-6", "2339-0", "8302-2", "72514-3", "http://loinc.org|4548-4", "8302-2,8480-6", "nope"]


@pytest.fixture(autouse=True)
def columns_for_every_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test stores are small: treat every type as large, searches over one patient too, no quiet wait."""
    monkeypatch.setattr(type_columns, "MAX_TYPE_RESOURCES", 0)
    monkeypatch.setattr(type_columns, "QUIET_S", 0.0)
    monkeypatch.setattr(type_columns, "QUIET_LOADS", 0.0)
    monkeypatch.setattr(type_columns, "LOAD_IN_BACKGROUND", False)
    monkeypatch.setattr(search_module, "COLUMNS_MIN_PATIENTS", 1)


def sql(store: Store, rtype: str, params: list[tuple[str, str]], count: int, offset: int = 0) -> tuple:
    search_module.IN_MEMORY = False
    try:
        res = search(store, SearchRequest(rtype, params, count=count, offset=offset))
    finally:
        search_module.IN_MEMORY = True
    return res.total, res.keys


def by_columns(store: Store, rtype: str, params: list[tuple[str, str]], count: int, offset: int = 0) -> tuple:
    total, ids = type_columns.search(store, prepare(rtype, params, ""), offset, count)
    return total, [(rtype, i) for i in ids]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(
    patients=st.sampled_from(["", f"Patient/{PID}", f"{PID},{OTHER}", f"Patient/{OTHER},Patient/nobody"]),
    code=st.none() | st.sampled_from(CODES),
    status=st.none() | st.sampled_from(["final", "amended,final"]),
    category=st.none() | st.sampled_from(["vital-signs", "laboratory", "vital-signs,laboratory,survey"]),
    count=st.integers(0, 30),
    offset=st.integers(0, 40),
)
def test_columns_equal_sql(store: Store, patients: str, code: str | None, status: str | None,
                           category: str | None, count: int, offset: int) -> None:
    params = [("subject", patients)] if patients else []
    for name, value in (("code", code), ("status", status), ("category", category)):
        if value is not None:
            params.append((name, value))
    assert by_columns(store, "Observation", params, count, offset) == sql(store, "Observation", params, count, offset)


def test_chains_over_many_patients_equal_sql(store: Store) -> None:
    """The case the columns exist for: a chain into Patient that finds several patients."""
    for params in ([("subject:Patient.gender", "female"), ("code", "8302-2")],
                   [("subject:Patient.birthdate", "lt2000"), ("_sort", "_lastUpdated")],
                   [("patient.gender", "male,female"), ("code", "8302-2,29463-7")]):
        res = search(store, SearchRequest("Observation", params, count=5, offset=2))
        assert (res.total, res.keys) == sql(store, "Observation", params, 5, 2) and res.total > 0


def test_value_numbers_only_for_one_value_per_resource(store: Store) -> None:
    cache = type_columns.TypeColumnsCache(store)
    cols = cache.columns("Observation", [("subject", (0, 1)), ("combo-code", 1)])
    numbers, by_rank = cols.numbers(("subject", (0, 1)))
    subject = {(v, cols.ids[k]) for v, ranks in cols.groups[("subject", (0, 1))].items() for k in ranks}
    assert {(v, cols.ids[k]) for v, n in numbers.items() for k in np.flatnonzero(by_rank == n)} == subject
    assert cols.numbers(("combo-code", 1)) is None  # panels carry their components' codes too


def test_declines_what_it_cannot_answer(store: Store) -> None:
    for params in ([("date", "ge2015")], [("code:not", "8302-2")], [("_id", "x")], [("value-quantity", "gt5")]):
        with pytest.raises(Unsupported):
            type_columns.search(store, prepare("Observation", params, ""), 0, 10)
    with pytest.raises(Unsupported):
        type_columns.search(store, prepare("Observation", [("code", "8302-2")], "-date"), 0, 10)


def test_writes_drop_the_columns_and_recent_writes_defer_the_rebuild(store: Store, synthea_resources: list[dict],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    params = [("subject", f"Patient/{PID}"), ("code", "8302-2")]
    before = by_columns(store, "Observation", params, 100)
    obs = copy.deepcopy(next(r for r in synthea_resources if r["resourceType"] == "Observation"
                             and r["subject"]["reference"] == f"Patient/{PID}" and "8302-2" in str(r["code"])))
    obs.pop("meta", None)
    obs["id"] = "columns-write-probe"
    monkeypatch.setattr(type_columns, "QUIET_S", 3600.0)
    store.write([obs])
    with pytest.raises(Unsupported):  # written just now: another path answers until the type is quiet
        by_columns(store, "Observation", params, 100)
    assert search(store, SearchRequest("Observation", params, count=100)).total == before[0] + 1
    monkeypatch.setattr(type_columns, "QUIET_S", 0.0)
    after = by_columns(store, "Observation", params, 100)
    assert after[0] == before[0] + 1 and ("Observation", "columns-write-probe") in after[1]
    store.delete("Observation", "columns-write-probe")
    assert by_columns(store, "Observation", params, 100) == before


def test_a_type_whose_loads_are_slow_waits_longer_after_a_write(store: Store, synthea_resources: list[dict],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads are held to a share of the time: the quiet time after a write grows with the last load's."""
    monkeypatch.setattr(type_columns, "QUIET_LOADS", 10.0)
    cache = type_columns.TypeColumnsCache(store)
    assert cache.columns("Observation", [("code", 1)])  # no write seen yet: loads at once
    cache._load_seconds["Observation"] = 100.0  # as if that load had taken 100 s
    probe = copy.deepcopy(next(r for r in synthea_resources if r["resourceType"] == "Observation"))
    probe.pop("meta", None)
    probe["id"] = "columns-quiet-probe"
    store.write([probe])
    with pytest.raises(Unsupported, match="written in the last 1000.0 s"):
        cache.columns("Observation", [("code", 1)])
    cache._load_seconds["Observation"] = 0.0
    assert cache.columns("Observation", [("code", 1)])  # QUIET_S is 0 here: loads again
    store.delete("Observation", "columns-quiet-probe")


def test_a_write_during_a_load_discards_it(store: Store, synthea_resources: list[dict],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cache = type_columns.TypeColumnsCache(store)
    patient = copy.deepcopy(next(r for r in synthea_resources if r["resourceType"] == "Patient"))
    patient.pop("meta", None)
    patient["id"] = "columns-race-probe"
    load = cache._load_group

    def racing(cols: type_columns.TypeColumns, param: str, column: object) -> dict:
        out = load(cols, param, column)
        store.write([copy.deepcopy(patient)])
        return out

    monkeypatch.setattr(cache, "_load_group", racing)
    with pytest.raises(Unsupported):
        cache.columns("Patient", [("gender", 1)])
    assert "Patient" not in cache._columns
    store.delete("Patient", "columns-race-probe")


def test_searches_do_not_wait_for_a_load_in_progress(store: Store) -> None:
    cache = type_columns.TypeColumnsCache(store)
    with cache._build_lock, pytest.raises(Unsupported, match="being loaded"):  # another thread is loading
        cache.columns("Observation", [("code", 1)])
    assert cache.columns("Observation", [("code", 1)]).groups[("code", 1)]


def test_a_search_starts_the_load_in_the_background_and_does_not_wait(store: Store,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type_columns, "LOAD_IN_BACKGROUND", True)
    cache = type_columns.TypeColumnsCache(store)
    with pytest.raises(Unsupported, match="being loaded"):
        cache.columns("Observation", [("code", 1)])
    with cache._build_lock:  # taken by the load until it is done
        assert cache._columns["Observation"].groups[("code", 1)]["8302-2"].size > 0


def test_closing_the_store_waits_for_a_background_load(synthea_resources: list[dict],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type_columns, "LOAD_IN_BACKGROUND", True)
    s = Store(":memory:")
    s.write([copy.deepcopy(r) for r in synthea_resources if r["resourceType"] == "Observation"][:200])
    cache = type_columns.TypeColumnsCache(s)
    load = cache._load_ranks
    started = threading.Event()

    def slow(rtype: str) -> type_columns.TypeColumns:
        started.set()
        time.sleep(0.3)  # the load is still reading when the store closes
        return load(rtype)

    monkeypatch.setattr(cache, "_load_ranks", slow)
    with pytest.raises(Unsupported, match="being loaded"):
        cache.columns("Observation", [("code", 1)])
    assert started.wait(5)
    s.close()  # DuckDB would refuse to close a connection whose cursor is busy
    assert "Observation" in cache._columns
    with pytest.raises(Unsupported, match="closed"):
        cache.columns("Encounter", [("status", 1)])


def test_the_event_loop_path_uses_loaded_columns_only(store: Store, synthea_resources: list[dict]) -> None:
    params = [("subject", f"{PID},{OTHER}"), ("code", "8302-2")]
    probe = copy.deepcopy(next(r for r in synthea_resources if r["resourceType"] == "Observation"))
    probe.pop("meta", None)
    probe["id"] = "columns-drop-probe"
    store.write([probe])  # drops the type's columns
    store.delete("Observation", "columns-drop-probe")
    assert search_in_memory(store, SearchRequest("Observation", params)) is None  # not loaded: no DuckDB here
    full = search(store, SearchRequest("Observation", params))  # loads them
    quick = search_in_memory(store, SearchRequest("Observation", params))
    assert quick is not None and (quick.total, quick.keys) == (full.total, full.keys) and full.total > 0
    rev = [("subject", f"{PID},{OTHER}"), ("_revinclude", "Provenance:target")]
    assert search_in_memory(store, SearchRequest("Observation", rev)) is None  # includes need DuckDB


def test_a_background_load_finishes_before_the_interpreter_exits() -> None:
    """A script that searches and ends without closing its store: the load it started is not stopped
    half-way at the exit (stopped inside a DuckDB scan it aborted the process)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import time\n"
        "import store.type_columns as tc\n"
        "from store.patient_cache import Unsupported\n"
        "from store.store import Store\n"
        "s = Store(':memory:')\n"
        "s.write([{'resourceType': 'Observation', 'id': f'o{i}', 'status': 'final',\n"
        "          'code': {'coding': [{'system': 'http://loinc.org', 'code': '8302-2'}]}} for i in range(50)])\n"
        "cache = tc.TypeColumnsCache(s)\n"
        "load = cache._load_ranks\n"
        "def slow(rtype):\n"
        "    time.sleep(0.3)\n"
        "    out = load(rtype)\n"
        "    print('loaded', flush=True)\n"
        "    return out\n"
        "cache._load_ranks = slow\n"
        "try:\n"
        "    cache.columns('Observation', [('code', 1)])\n"
        "except Unsupported:\n"
        "    print('started', flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["started", "loaded"]
