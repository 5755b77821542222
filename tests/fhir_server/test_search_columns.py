"""A chained search over many patients through the API, answered from the type columns: the same
matches, order, totals and paging as the resources written say."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import store.search as search_module
import store.type_columns as type_columns
from store.store import Store


@pytest.fixture(scope="module", autouse=True)
def columns_for_small_stores() -> Iterator[None]:
    """The test store is small: every type counts as large, no quiet time after writes, loads at once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type_columns, "MAX_TYPE_RESOURCES", 0)
        mp.setattr(type_columns, "QUIET_S", 0.0)
        mp.setattr(type_columns, "QUIET_LOADS", 0.0)
        mp.setattr(type_columns, "LOAD_IN_BACKGROUND", False)
        mp.setattr(search_module, "COLUMNS_MIN_PATIENTS", 3)
        yield


@pytest.fixture(scope="module")
def written(http: httpx.Client, patient: Any, observation: Any) -> dict[str, Any]:
    pids = [http.post("Patient", json=patient("Columnchain" if i % 3 else "Otherfamily")).json()["id"]
            for i in range(12)]
    obs = []
    for i, pid in enumerate(pids):
        for code in ("8867-4", "9279-1"):
            body = http.post("Observation", json=observation(pid, code=code, value=60 + i)).json()
            obs.append((body["meta"]["lastUpdated"], body["id"], pid, code))
    return {"chain_pids": {p for i, p in enumerate(pids) if i % 3}, "obs": obs}


def test_chained_search_pages_in_the_default_order(http: httpx.Client, server: tuple[Store, str],
                                                   written: dict[str, Any]) -> None:
    expected = [rid for _, rid, pid, code in sorted(written["obs"])
                if pid in written["chain_pids"] and code == "9279-1"]
    params = {"subject:Patient.name": "columnchain", "code": "http://loinc.org|9279-1", "_count": "3"}
    for _ in range(2):  # the first loads the columns (thread pool), the second is answered on the event loop
        got, url, totals = [], "Observation", set()
        while url:
            bundle = http.get(url, params=params if url == "Observation" else None).json()
            totals.add(bundle["total"])
            got += [e["resource"]["id"] for e in bundle.get("entry", [])]
            url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        assert got == expected and totals == {len(expected)} == {8}
    assert "Observation" in type_columns._CACHES[server[0]]._columns  # the columns answered it
    count = http.get("Observation", params={**params, "_summary": "count"}).json()
    assert count["total"] == 8 and "entry" not in count
