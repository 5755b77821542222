"""Versioned writes, the hot map, history, deletes and point-in-time reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from store.store import Store, StoreError


def patient(pid: str = "p1", family: str = "Doe") -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}], "gender": "female"}


@pytest.fixture
def store() -> Store:
    s = Store(":memory:")
    yield s
    s.close()


def test_create_update_unchanged_versions(store: Store) -> None:
    (r1,) = store.write([patient()])
    assert (r1.outcome, r1.version_id) == ("created", 1)
    (same,) = store.write([patient()])
    assert (same.outcome, same.version_id) == ("unchanged", 1)
    (r2,) = store.write([patient(family="Roe")])
    assert (r2.outcome, r2.version_id) == ("updated", 2)
    current = store.read("Patient", "p1")
    assert current["name"][0]["family"] == "Roe"
    assert current["meta"]["versionId"] == "2"
    assert current["meta"]["lastUpdated"].endswith("Z")
    deleted_flag, v1 = store.vread("Patient", "p1", 1)
    assert not deleted_flag and v1["name"][0]["family"] == "Doe"
    assert store.vread("Patient", "p1", 3) is None


def test_key_order_and_store_meta_do_not_make_new_versions(store: Store) -> None:
    store.write([patient()])
    reordered = {"gender": "female", "name": [{"family": "Doe"}], "id": "p1", "resourceType": "Patient"}
    reordered["meta"] = {"versionId": "99", "lastUpdated": "2000-01-01T00:00:00Z"}
    (r,) = store.write([reordered])
    assert r.outcome == "unchanged"


def test_delete_then_history_and_recreate(store: Store) -> None:
    store.write([patient()])
    assert store.delete("Patient", "p1").outcome == "deleted"
    assert store.read("Patient", "p1") is None
    assert store.current("Patient", "p1").deleted
    assert store.delete("Patient", "p1").outcome == "unchanged"
    assert store.delete("Patient", "nobody").outcome == "not-found"
    total, rows = store.history("Patient", "p1")
    assert total == 2
    assert [(v, d) for _, _, v, _, d, _, _ in rows] == [(2, True), (1, False)]
    (again,) = store.write([patient()])
    assert (again.outcome, again.version_id) == ("created", 3)


def test_point_in_time_view_sees_only_versions_written_by_then(store: Store) -> None:
    store.write([patient(family="Before")])
    between = datetime.now(UTC)
    store.write([patient(family="After"), patient("p2")])
    rows = store.cursor().execute(
        f"SELECT id, json ->> '$.name[0].family' FROM {store.as_of_sql(between)} ORDER BY id"
    ).fetchall()
    assert rows == [("p1", "Before")]
    now_rows = store.cursor().execute(f"SELECT count(*) FROM {store.as_of_sql(None)}").fetchone()
    assert now_rows == (2,)


def test_ids_without_source_id_are_deterministic(store: Store) -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "identifier": [{"system": "s", "value": "1"}]}
    (a,) = store.write([dict(obs)])
    (b,) = store.write([dict(obs)])
    assert a.id == b.id and b.outcome == "unchanged"
    anon = {"resourceType": "Basic", "code": {"text": "y"}}
    (c,) = store.write([dict(anon)])
    (d,) = store.write([dict(anon)])
    assert c.id == d.id


def test_bad_ids_and_missing_type_are_refused(store: Store) -> None:
    with pytest.raises(StoreError) as err:
        store.write([{"resourceType": "Patient", "id": "has space"}])
    assert err.value.expression == "Patient.id"
    with pytest.raises(StoreError):
        store.write([{"id": "x"}])
    with pytest.raises(StoreError, match="Observation/big cannot be written as JSON"):  # not a TypeError
        store.write([{"resourceType": "Observation", "id": "big", "valueInteger": 2**70}])
    assert store.count() == 0


def test_patient_compartment_column(store: Store) -> None:
    store.write([
        patient(),
        {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "t"},
         "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
         "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Organization", "id": "org", "name": "H"},
    ])
    rows = dict(store.cursor().execute("SELECT id, patient_id FROM resources").fetchall())
    assert rows == {"p1": "p1", "o1": "p1", "e1": "p1", "org": None}


def test_write_results_name_the_patients_whose_data_changed(store: Store) -> None:
    """Commit listeners learn whose data changed from the results, deletions included."""
    seen = []
    store.on_commit(seen.extend)
    link = {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "t"},
            "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Patient/p2"}]}
    results = store.write([patient(), link])
    assert [r.patients for r in results] == [("p1",), ("p1", "p2")]
    assert store.write([patient()])[0].patients == ()  # unchanged: nothing changed for anyone
    assert store.delete("Observation", "o2").patients == ("p1", "p2")  # the ended version's patients
    assert [(r.id, r.outcome, r.patients) for r in seen] == [
        ("p1", "created", ("p1",)), ("o2", "created", ("p1", "p2")), ("o2", "deleted", ("p1", "p2"))]


def test_reopen_file_keeps_current_versions(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    with Store(db) as s:
        s.write([patient()])
        s.write([patient(family="Roe")])
    with Store(db) as s:
        assert s.read("Patient", "p1")["meta"]["versionId"] == "2"
        (r,) = s.write([patient(family="Roe")])
        assert r.outcome == "unchanged"


def _body_compression(store: Store) -> dict[str, set[str]]:
    """Compression of the stored bodies per resource table (DuckDB's segments, after a checkpoint)."""
    con = store.cursor()
    con.execute("CHECKPOINT")
    return {table: {row[0] for row in con.execute(
        f"SELECT compression FROM pragma_storage_info('{table}') WHERE column_name = 'json' AND segment_type = 'JSON'"
    ).fetchall()} for table in ("resource_versions", "resources_current")}


def test_bodies_are_zstd_compressed_and_stay_so_when_clustered(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    with Store(db) as s:
        s.write([patient(f"p{i}", f"Doe{i}") for i in range(50)])
        s.write([patient("p1", "Roe")])
        assert _body_compression(s) == {"resource_versions": {"ZSTD"}, "resources_current": {"ZSTD"}}
        before = _stored(s)
        s.optimize()  # rewrites resources_current sorted by patient
        assert _body_compression(s) == {"resource_versions": {"ZSTD"}, "resources_current": {"ZSTD"}}
        assert _stored(s) == before
    with Store(db) as s:
        assert s.read("Patient", "p1")["name"][0]["family"] == "Roe"
        assert s.vread("Patient", "p1", 1)[1]["name"][0]["family"] == "Doe1"
        assert _stored(s) == before


def _stored(store: Store) -> list[tuple]:
    """Versions and index rows, without commit timestamps (they differ between stores)."""
    con = store.cursor()
    versions = con.execute(
        "SELECT resource_type, id, version_id, deleted, json->>'$.name[0].family', "
        "json->>'$.meta.versionId' FROM resource_versions ORDER BY ALL"
    ).fetchall()
    current = con.execute("SELECT resource_type, id, version_id FROM resources_current ORDER BY ALL").fetchall()
    tokens = con.execute("SELECT rt, id, param, code FROM idx_token ORDER BY ALL").fetchall()
    strings = con.execute("SELECT rt, id, param, value FROM idx_string ORDER BY ALL").fetchall()
    return [versions, current, tokens, strings]


@pytest.mark.parametrize("flush", [20_000, 1])
def test_prepared_batches_in_one_transaction_store_what_batch_by_batch_writes_store(
    flush: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with every batch inserted as it is added (``flush`` 1): a resource inserted earlier in the
    transaction and changed by a later batch keeps one current row and the index rows of its last version."""
    import store.store as store_module
    from store.prepare import prepare

    monkeypatch.setattr(store_module, "FLUSH_RESOURCES", flush)

    rounds = [
        [patient("a", "Doe"), patient("b", "Roe")],
        [patient("a", "Doe"), patient("b", "Poe"), patient("c", "Loe")],  # a unchanged, b changed, c new
        [patient("b", "Moe"), patient("b", "Noe"), patient("a", "Zoe")],  # within a batch the last wins
    ]
    one_by_one, together = Store(":memory:"), Store(":memory:")
    one_by_one.write([patient("a", "Old")])
    together.write([patient("a", "Old")])
    expected = [one_by_one.write_prepared(prepare(batch)[0]) for batch in rounds]
    got = together.write_prepared_many([prepare(batch)[0] for batch in rounds])
    outcome = [[(r.id, r.version_id, r.outcome) for r in results] for results in expected]
    assert [[(r.id, r.version_id, r.outcome) for r in results] for results in got] == outcome
    assert outcome[1] == [("a", 2, "unchanged"), ("b", 2, "updated"), ("c", 1, "created")]
    assert _stored(together) == _stored(one_by_one)
    assert [v[2] for v in _stored(together)[0] if v[1] == "b"] == [1, 2, 3]
    assert together.read("Patient", "b")["name"][0]["family"] == "Noe"
    assert together.read("Patient", "a")["meta"]["versionId"] == "3"
    # Every batch keeps its own lastUpdated, in order, as separate writes would.
    _, history = together.history("Patient", "b")
    assert [row[2] for row in history] == [3, 2, 1] and history[0][3] > history[1][3] > history[2][3]


def test_opening_a_store_makes_pyarrows_first_conversion() -> None:
    """Where pandas is installed, pyarrow imports it at its first conversion of Python values
    (0.3–1 s): a store makes that conversion when it opens, so the first write (a listener's first
    ACK) does not pay it. Checked in a fresh interpreter, counting the conversions before any write."""
    import subprocess
    import sys

    code = ("import pyarrow as pa\n"
            "seen = []\n"
            "convert = pa.array\n"
            "pa.array = lambda values, *a, **k: (seen.append(values), convert(values, *a, **k))[1]\n"
            "from store.store import Store\n"
            "before = len(seen)\n"
            "Store(':memory:')\n"
            "print(before, len(seen) > before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["0", "True"]


def test_history_at_gives_the_versions_current_then(store: Store) -> None:
    """FHIR ``_at``: the version current at an instant, or every version current at some time in a period."""
    stamps = [store.write([patient(family=f"V{n}")])[0].last_updated for n in (1, 2, 3)]
    (other,) = store.write([patient("p2")])
    deleted = store.delete("Patient", "p1").last_updated
    tick = timedelta(microseconds=1)

    def versions(at: Any, rid: str | None = "p1") -> list[tuple[str, int]]:
        return [(r[1], r[2]) for r in store.history("Patient", rid, at=at)[1]]

    assert versions(stamps[0] - tick) == []
    assert versions(stamps[0]) == versions(stamps[1] - tick) == [("p1", 1)]
    assert versions(stamps[2] + tick) == [("p1", 3)]
    assert versions(deleted) == [("p1", 4)]  # a deletion is what was current then
    assert versions((stamps[0], stamps[2])) == [("p1", 2), ("p1", 1)]  # the end is not in the period
    assert versions((stamps[0], stamps[2] + tick)) == [("p1", 3), ("p1", 2), ("p1", 1)]
    assert versions(other.last_updated, None) == [("p2", 1), ("p1", 3)]  # type history
    assert store.history("Patient", "p1", at=(stamps[0], deleted), since=stamps[1])[0] == 1  # with _since


def test_a_write_group_holds_the_writer_until_it_commits_and_a_rollback_drops_its_inserted_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    import store.store as store_module
    from store.prepare import prepare

    monkeypatch.setattr(store_module, "FLUSH_RESOURCES", 1)  # every batch inserted as it is added
    s = Store(":memory:")
    group = s.write_group()
    assert [r.outcome for r in group.add(prepare([patient("a", "Doe")])[0])] == ["created"]
    assert [(r.version_id, r.outcome) for r in group.add(prepare([patient("a", "Roe")])[0])] == [(2, "updated")]
    other = threading.Thread(target=s.write, args=([patient("x", "Other")],))
    other.start()
    other.join(0.3)
    assert other.is_alive()  # the group's transaction is open: other writers wait for it
    assert s.read("Patient", "a") is None  # nothing is visible before the commit
    group.rollback()
    other.join()
    assert s.read("Patient", "a") is None and s.read("Patient", "x")["name"][0]["family"] == "Other"
    assert s.cursor().execute("SELECT count(*) FROM resource_versions WHERE id = 'a'").fetchone()[0] == 0
    assert s.cursor().execute("SELECT count(*) FROM idx_string WHERE id = 'a'").fetchone()[0] == 0
    # The group starts afresh: the same batches again make versions 1 and 2.
    group.add(prepare([patient("a", "Doe")])[0])
    group.add(prepare([patient("a", "Roe")])[0])
    group.commit()
    assert s.read("Patient", "a")["meta"]["versionId"] == "2"
    assert s.cursor().execute(
        "SELECT id, value FROM idx_string WHERE param = 'family' AND id = 'a'").fetchall() == [("a", "roe")]


def test_a_file_from_before_history_kept_the_method_gets_the_column(tmp_path: Path) -> None:
    """Opened for writing, an older file gains the column (its versions have none: history infers them);
    opened read-only, it is left as it is and history still answers."""
    import duckdb

    from store.schema import RESOURCE_COLUMNS

    db = tmp_path / "old.duckdb"
    with Store(db) as s:
        s.write([patient("p1", "Doe")], methods=["PUT"])
    con = duckdb.connect(str(db))  # the table as such files had it
    con.execute(f"CREATE TABLE old_versions ({RESOURCE_COLUMNS})")
    con.execute("INSERT INTO old_versions SELECT * EXCLUDE (method) FROM resource_versions")
    con.execute("DROP TABLE resource_versions")
    con.execute("ALTER TABLE old_versions RENAME TO resource_versions")
    con.close()
    with Store(db, read_only=True) as old:
        assert [(r[2], r[6]) for r in old.history("Patient", "p1")[1]] == [(1, None)]
    with Store(db) as s:
        s.write([patient("p1", "Roe")], methods=["PATCH"])
        assert [(r[2], r[6]) for r in s.history("Patient", "p1")[1]] == [(2, "PATCH"), (1, None)]
