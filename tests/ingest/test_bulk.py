"""Bulk NDJSON import (worker processes or in process) leaves exactly what record-by-record import leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest import bulk
from ingest.bulk import line_chunks, prepare_chunk
from ingest.pipeline import Ingestor, IngestSummary
from store import store as store_module
from store.prepare import prepare
from store.search_index import INDEX_TABLES
from store.store import DEFAULT_CACHE_MB, Store

SYNTHEA_NDJSON = Path(__file__).resolve().parents[2] / "fixtures" / "synthea" / "ndjson"
BAD_LINES = [
    b'{"resourceType":"Patient","id":',  # not JSON
    b'{"id":"no-type"}',  # no resourceType
    b'{"resourceType":"Patient","id":"bad id!"}',  # an id the store refuses
    b'{"resourceType":"Patient","id":"p-bad","birthDate":"not-a-date"}',  # fails R4 validation
    b'{"resourceType":"Patient","id":"marks","name":[{"text":"\\u0000fhirtwin:versionId"}]}',
]


@pytest.fixture(scope="module")
def bulk_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Synthea NDJSON in one file, with refused lines, a replayed line and a changed version."""
    lines = [
        line
        for path in sorted(SYNTHEA_NDJSON.glob("*.ndjson"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
    changed = orjson.loads(lines[0])
    changed["language"] = "en"
    body = [*lines[:50], *BAD_LINES, b"", lines[3], *lines[50:], orjson.dumps(changed)]
    path = tmp_path_factory.mktemp("bulk") / "all.ndjson"
    path.write_bytes(b"\n".join(body) + b"\n")
    return path


def _content(store: Store) -> dict[str, Any]:
    """Everything the store holds, with the commit timestamps taken out (they differ run to run)."""
    con = store.cursor()
    versions = []
    for rtype, rid, vid, ts, deleted, pid, chash, js in con.execute(
        "SELECT resource_type, id, version_id, last_updated, deleted, patient_id, content_hash, json "
        "FROM resource_versions ORDER BY ALL"
    ).fetchall():
        res = orjson.loads(js)
        assert res["meta"]["lastUpdated"] == ts.isoformat(timespec="microseconds").replace("+00:00", "Z")
        del res["meta"]["lastUpdated"]
        versions.append((rtype, rid, vid, deleted, pid, chash, res))
    index = {table: con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall() for table in INDEX_TABLES}
    letters = [(d["source"], d["line"], d["format"], d["raw"], d["reason"]) for d in store.dead_letters()]
    return {"versions": versions, "index": index, "letters": sorted(letters, key=str),
            "current": con.execute("SELECT resource_type, id, version_id, content_hash FROM resources_current "
                                   "ORDER BY ALL").fetchall()}


def _summary(s: IngestSummary) -> tuple[Any, ...]:
    return s.accepted, s.unchanged, s.rejected, dict(s.by_type), sorted(s.errors)


@pytest.fixture(scope="module")
def plain(bulk_file: Path) -> tuple[Store, IngestSummary]:
    """The file imported record by record: the reference."""
    store = Store(":memory:")
    ingestor = Ingestor(store, workers=0, bulk_min_bytes=bulk_file.stat().st_size + 1)
    assert not ingestor.bulk_eligible(bulk_file)
    return store, ingestor.ingest_paths([bulk_file])


# Worker processes and one transaction for the whole file, its chunks inserted as they come (a flush
# per 500 resources: the resource the last line changes was inserted by the first); chunks prepared in
# process and several transactions; and with room in memory for ~100 current versions only, so that
# most comparisons read the database.
@pytest.mark.parametrize(("workers", "commit_resources", "cache_mb", "flush"),
                         [(2, 50_000, DEFAULT_CACHE_MB, 500), (0, 3_000, DEFAULT_CACHE_MB, 20_000),
                          (0, 3_000, 0.2, 20_000)])
def test_bulk_path_stores_what_the_plain_path_stores(
    bulk_file: Path, plain: tuple[Store, IngestSummary], workers: int, commit_resources: int, cache_mb: float,
    flush: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_module, "FLUSH_RESOURCES", flush)
    plain, plain_summary = plain
    parallel = Store(":memory:", cache_mb=cache_mb)
    assert parallel.cache.complete
    ingestor = Ingestor(parallel, workers=workers)
    assert ingestor.bulk_eligible(bulk_file)
    parallel_summary = ingestor.ingest_ndjson_parallel(bulk_file, lines_per_chunk=700,
                                                       commit_resources=commit_resources)
    assert _summary(parallel_summary) == _summary(plain_summary)
    assert plain_summary.rejected == 4 and plain_summary.unchanged == 1, plain_summary.errors
    expected = _content(plain)
    got = _content(parallel)
    assert got["versions"] == expected["versions"]
    for table in INDEX_TABLES:
        assert got["index"][table] == expected["index"][table], table
    assert got["letters"] == expected["letters"]
    assert got["current"] == expected["current"]
    assert parallel.cache.complete is (cache_mb == DEFAULT_CACHE_MB)
    assert parallel.cache.held_bytes <= parallel.cache.budget_bytes
    # A read after the write sees it, with the store meta spliced into the prepared body.
    marks = parallel.read("Patient", "marks")
    assert marks["name"][0]["text"] == "\x00fhirtwin:versionId" and marks["meta"]["versionId"] == "1"
    # Replaying the file creates nothing but the two versions of the one resource the file holds twice.
    again = ingestor.ingest_ndjson_parallel(bulk_file, lines_per_chunk=700, commit_resources=commit_resources)
    assert again.accepted == 2 and again.unchanged == plain_summary.accepted + plain_summary.unchanged - 2
    assert len(_content(parallel)["versions"]) == len(expected["versions"]) + 2


def test_chunks_keep_line_numbers_and_refusals(bulk_file: Path) -> None:
    chunks = list(line_chunks(bulk_file, lines_per_chunk=40))
    assert [first for first, _ in chunks[:3]] == [1, 41, 81]
    first, data = chunks[1]
    result = prepare_chunk(str(bulk_file), first, data, validate=True)
    assert [r.line for r in result.refused] == [51, 52, 53, 54]
    assert result.refused[0].raw == BAD_LINES[0]
    assert result.refused[3].problems[0].expression == "Patient.birthDate"
    assert len(result.prepared) == 40 - 4 - 1  # blank line
    # Without validation the store's own id check refuses the bad id, as a plain write would.
    unchecked = prepare_chunk(str(bulk_file), first, data, validate=False)
    assert [r.line for r in unchecked.refused] == [51, 52, 53]
    assert unchecked.refused[2].problems[0].diagnostics == "invalid id 'bad id!'"


def test_folder_of_bulk_files_shares_one_pool_and_stores_what_the_plain_path_stores(
    bulk_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pools: list[int] = []
    real_pool = bulk.worker_pool
    monkeypatch.setattr(bulk, "worker_pool", lambda workers: pools.append(workers) or real_pool(workers))
    lines = bulk_file.read_bytes().splitlines()[:1500]
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "a.ndjson").write_bytes(b"\n".join(lines[:700]) + b"\n")
    (folder / "b.ndjson").write_bytes(b"\n".join(lines[700:]) + b"\n")
    plain, bulk_store = Store(":memory:"), Store(":memory:")
    expected = Ingestor(plain, workers=0, bulk_min_bytes=1 << 40).ingest_paths([folder])
    got = Ingestor(bulk_store, workers=2, bulk_min_bytes=0).ingest_paths([folder])
    assert _summary(got) == _summary(expected) and got.files == expected.files == 2
    assert got.rejected == 4 and pools == [2]
    assert _content(bulk_store)["versions"] == _content(plain)["versions"]


@pytest.mark.parametrize("threaded", [True, False])
def test_a_failed_write_rolls_the_import_back_and_frees_the_writer(threaded: bool) -> None:
    """A failure on the writer thread rolls the open transaction back at once and nothing after it is
    written; the error reaches the importing thread, and the store takes writes again."""
    store = Store(":memory:")

    def refuse(_results: object) -> None:
        raise RuntimeError("tally failed")

    def batch(rid: str) -> Any:
        return prepare([{"resourceType": "Patient", "id": rid}])[0]

    with bulk.ImportWriter(store, 1_000_000, threaded=threaded) as writer:
        with pytest.raises(RuntimeError, match="tally failed"):  # raised by whichever call comes after it
            writer.write(batch("p1"), lambda _results: None)
            writer.write(batch("p2"), refuse)
            writer.write(batch("p3"), lambda _results: None)
            writer.commit()
        writer.commit()  # waits for what was queued behind the failure: it writes nothing
    assert [store.read("Patient", rid) for rid in ("p1", "p2", "p3")] == [None, None, None]
    assert store.write([{"resourceType": "Patient", "id": "p4"}])[0].outcome == "created"


def test_the_collector_is_paused_for_the_whole_bulk_import(bulk_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between chunks too (the import makes no reference cycles; its passes walked the map of current
    versions again and again), and it runs again afterwards."""
    import gc

    seen: list[bool] = []
    tally = Ingestor._tally
    monkeypatch.setattr(Ingestor, "_tally", staticmethod(lambda results, summary: (seen.append(gc.isenabled()),
                                                                                 tally(results, summary))))
    monkeypatch.setattr(bulk, "prepare_chunk", lambda *args: (seen.append(gc.isenabled()), prepare_chunk(*args))[1])
    assert gc.isenabled()
    Ingestor(Store(":memory:"), workers=0).ingest_ndjson_parallel(bulk_file, lines_per_chunk=700)
    assert len(seen) > 4 and not any(seen)
    assert gc.isenabled()
