"""The map of current versions within a memory budget: a store with room for a few resources answers
exactly as one holding them all, and does not grow with the database."""

from __future__ import annotations

import copy
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhirtwin.settings import DEFAULT_CACHE_MB as SETTINGS_DEFAULT
from store.current_cache import ENTRY_OVERHEAD_BYTES, Current, CurrentCache, entry_bytes
from store.export import export_ndjson
from store.search import SearchRequest, search, search_system
from store.store import DEFAULT_CACHE_MB, Store, default_db_memory_mb

SMALL_MB = 0.05  # ~50 KB: a few dozen Synthea resources


def _entry(n: int, size: int = 100) -> Current:
    return Current(n, f"h{n}", datetime(2026, 1, 1, tzinfo=UTC), False, b"x" * size)


def test_the_cache_drops_the_entries_written_longest_ago_and_asks_the_database_for_them() -> None:
    asked: list[list[tuple[str, str]]] = []

    def load(keys: list[tuple[str, str]]) -> dict[tuple[str, str], Current]:
        asked.append(keys)
        return {k: _entry(-1) for k in keys if k[1] != "absent"}

    budget = 10 * (ENTRY_OVERHEAD_BYTES + 100)
    cache = CurrentCache(budget, load)
    for n in range(8):
        cache.put(("Patient", str(n)), _entry(n))
    assert cache.complete and len(cache) == 8
    assert cache.get(("Patient", "absent")) is None and not asked  # complete: a miss means none
    cache.put(("Patient", "0"), _entry(100))  # rewritten: now the newest
    for n in range(8, 12):
        cache.put(("Patient", str(n)), _entry(n))
    assert not cache.complete and cache.held_bytes <= budget
    kept = {k[1] for k in cache._map}
    assert "0" in kept and "11" in kept and "1" not in kept  # the oldest written went first
    assert cache.held_bytes == sum(entry_bytes(c) for c in cache._map.values())
    assert cache.get(("Patient", "1")).version_id == -1 and asked == [[("Patient", "1")]]
    found = cache.get_many([("Patient", "0"), ("Patient", "1"), ("Patient", "2"), ("Patient", "absent")])
    assert asked[-1] == [("Patient", "1"), ("Patient", "2"), ("Patient", "absent")]  # one load for all misses
    assert found[("Patient", "0")].version_id == 100 and ("Patient", "absent") not in found


def test_the_command_line_default_is_the_store_default() -> None:
    assert SETTINGS_DEFAULT == DEFAULT_CACHE_MB


def _without_stamp(resource: dict[str, Any] | None) -> dict[str, Any] | None:
    if resource is not None:
        del resource["meta"]["lastUpdated"]  # the time of the write: another in each store
    return resource


def _observable(store: Store, keys: list[tuple[str, str]], out: Path) -> dict[str, Any]:
    """What a client sees: reads, versions, counts, search pages (SQL, index-only, across types), an export."""
    found = search(store, SearchRequest("Observation", [("_sort", "_id")], count=50, offset=0))
    by_code = search(store, SearchRequest("Observation", [("code", "http://loinc.org|8302-2")], count=500, offset=0))
    across = search_system(store, [("_type", "Observation,Encounter"), ("_sort", "-_lastUpdated")], 30, 0, False)
    reads = [_without_stamp(store.read(t, i)) for t, i in keys]
    export_ndjson(store, out)
    exported = {p.name: [_without_stamp(orjson.loads(line)) for line in p.read_bytes().splitlines()]
                for p in sorted(out.iterdir())}
    return {
        "across": across.keys,
        "export": exported,
        "reads": reads,
        "versions": [(c.version_id, c.content_hash, c.deleted) if (c := store.current(t, i)) else None for t, i in keys],
        "counts": store.counts_by_type(),
        "observations": store.count("Observation"),
        "page": (found.total, found.keys),
        "by_code": sorted(by_code.keys),
    }


def _history(store: Store, updated: list[dict[str, Any]], deleted: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Update, delete and replay some resources; the results a caller gets, without timestamps."""
    out = [(r.outcome, f"{r.resource_type}/{r.id}/{r.version_id}") for r in store.write(copy.deepcopy(updated))]
    out += [(r.outcome, f"{r.resource_type}/{r.id}/{r.version_id}") for r in store.write(copy.deepcopy(updated))]
    for t, i in deleted:
        r = store.delete(t, i)
        out.append((r.outcome, f"{t}/{i}/{r.version_id}"))
    out += [(store.delete(t, i).outcome, f"{t}/{i}") for t, i in deleted]
    return out


def test_a_store_with_room_for_a_few_resources_answers_as_one_holding_them_all(
    synthea_resources: list[dict[str, Any]], tmp_path: Path
) -> None:
    resources = [r for r in synthea_resources if r["resourceType"] in ("Patient", "Observation", "Encounter")][:1500]
    keys = [(r["resourceType"], r["id"]) for r in resources[::7]] + [("Patient", "nobody")]
    first = [r for r in resources if r["resourceType"] == "Observation"][:5]
    updated = [{**r, "status": "amended"} for r in first] + [resources[-1]]  # the last one is unchanged
    deleted = [(r["resourceType"], r["id"]) for r in resources[10:13]]
    seen = {}
    for name, cache_mb in (("all", DEFAULT_CACHE_MB), ("few", SMALL_MB)):
        path = tmp_path / f"{name}.duckdb"
        with Store(path, cache_mb=cache_mb) as store:
            for start in range(0, len(resources), 500):
                store.write(copy.deepcopy(resources[start:start + 500]))
            assert store.cache.complete is (name == "all")
            assert store.cache.held_bytes <= SMALL_MB * 2**20 or name == "all"
            history = _history(store, updated, deleted)
            seen[name] = (history, _observable(store, keys, tmp_path / f"{name}-export"))
        with Store(path, cache_mb=cache_mb) as reopened:  # filled from the file: all of it, or the newest
            assert reopened.cache.complete is (name == "all")
            assert reopened.current(*deleted[0]).deleted  # the newest are kept: the deletions
            seen[name + " reopened"] = _observable(reopened, keys, tmp_path / f"{name}-export-again")
            (again,) = reopened.write([copy.deepcopy(resources[0])])  # an old one, only in the file
            assert again.outcome == "unchanged"
    assert seen["few"] == seen["all"]
    assert seen["few reopened"] == seen["all reopened"] == seen["all"][1]
    assert ("deleted", f"{deleted[0][0]}/{deleted[0][1]}/2") in seen["few"][0]
    assert ("unchanged", f"{deleted[0][0]}/{deleted[0][1]}") in seen["few"][0]


def test_duckdb_memory_is_limited_to_half_of_physical_memory_or_as_given() -> None:
    def limit_mib(store: Store) -> float:
        text = store.cursor().execute("SELECT current_setting('memory_limit')").fetchone()[0]
        number, unit = text.split()
        return float(number) * {"MiB": 1, "GiB": 1024}[unit]

    with Store(db_memory_mb=300) as given:
        assert limit_mib(given) == 300
    with Store() as default:
        assert abs(limit_mib(default) - default_db_memory_mb()) < 0.01 * default_db_memory_mb()


def test_readers_never_take_a_stored_resource_for_absent_while_the_writer_updates_it() -> None:
    """Readers run on other threads without a lock: an update must not open a moment without the entry."""
    key = ("Patient", "p1")
    cache = CurrentCache(10**9, lambda keys: {})
    cache.put(key, _entry(0))
    cache.put(("Patient", "p2"), _entry(0))  # a newer one: each update moves p1 to the newest end
    misses = 0
    done = threading.Event()

    def read() -> None:
        nonlocal misses
        while not done.is_set():
            misses += cache.get(key) is None

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(1, 100_000):
            cache.put(key if n % 2 else ("Patient", "p2"), _entry(n))
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert misses == 0 and cache.complete and list(cache._written) == [("Patient", "p2"), key]


def test_readers_never_see_the_first_eviction_half_done() -> None:
    """The map must say it is incomplete before it drops its first entries, not after."""
    size = 20_000
    database = {("Patient", str(n)): _entry(n) for n in range(size + 1)}
    oldest = ("Patient", "0")  # the first entry the first eviction drops
    wrong = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(5):
            cache = CurrentCache(size * (ENTRY_OVERHEAD_BYTES + 100), lambda keys: {k: database[k] for k in keys})
            cache.fill(list(database.items())[:size], complete=True)
            done = threading.Event()

            def read(cache: CurrentCache = cache, done: threading.Event = done) -> None:
                nonlocal wrong
                while not done.is_set():
                    wrong += cache.get(oldest) is None

            reader = threading.Thread(target=read)
            reader.start()
            cache.put(("Patient", str(size)), database[("Patient", str(size))])  # over budget: ~2,000 dropped
            done.set()
            reader.join()
            assert not cache.complete
    finally:
        sys.setswitchinterval(interval)
    assert wrong == 0


def test_the_default_duckdb_limit_respects_a_container_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from store import store as store_module

    unlimited, limited = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    unlimited.write_text("max\n")
    limited.write_text(f"{2**30}\n")
    monkeypatch.setattr(store_module, "_CGROUP_LIMITS", (unlimited,))
    physical = default_db_memory_mb()
    monkeypatch.setattr(store_module, "_CGROUP_LIMITS", (unlimited, limited))
    assert default_db_memory_mb() == min(physical, 512)  # half of the container's 1 GiB
