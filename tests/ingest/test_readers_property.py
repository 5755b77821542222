"""Property-based tests of the FHIR file readers: any input is read without crashing, one record per
line, good records land intact, bad ones are refused with their line number."""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.fhir_files import read_ndjson
from ingest.pipeline import Ingestor
from store.store import Store

names = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll")), min_size=1, max_size=12)
patients = st.builds(
    lambda i, family, given, gender, y, m, d: {
        "resourceType": "Patient", "id": f"p{i}", "name": [{"family": family, "given": [given]}],
        "gender": gender, "birthDate": f"{y:04d}-{m:02d}-{d:02d}",
    },
    st.integers(0, 10**6), names, names, st.sampled_from(["male", "female", "other", "unknown"]),
    st.integers(1900, 2025), st.integers(1, 12), st.integers(1, 28),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=80).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=12))
def test_arbitrary_lines_never_crash_and_each_line_is_one_record(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.ndjson"
        path.write_bytes(b"\n".join(lines) + b"\n")
        records = list(read_ndjson(path))
    expected = [i + 1 for i, line in enumerate(lines) if line.strip()]
    assert [r.line for r in records] == expected
    for rec in records:
        assert rec.ok == bool(rec.resources)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(patients, min_size=1, max_size=8, unique_by=lambda p: p["id"]),
       st.lists(st.integers(0, 20), max_size=3))
def test_valid_records_land_intact_and_garbage_is_refused_by_line(good: list[dict], bad_at: list[int]) -> None:
    lines = [orjson.dumps(p) for p in good]
    bad_lines = set()
    for pos in sorted(set(bad_at), reverse=True):
        k = min(pos, len(lines))
        lines.insert(k, b'{"resourceType": "Patient", "gender": 42')
    for i, line in enumerate(lines):
        if line.startswith(b'{"resourceType": "Patient", "gender": 42'):
            bad_lines.add(i + 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.ndjson"
        path.write_bytes(b"\n".join(lines) + b"\n")
        store = Store(":memory:")
        summary = Ingestor(store).ingest_paths([path])
        assert summary.accepted == len(good) and summary.rejected == len(bad_lines)
        refused_lines = {int(e.split(": ", 1)[0].rsplit(":", 1)[1]) for e in summary.errors}
        assert refused_lines == bad_lines
        for p in good:
            stored = store.read("Patient", p["id"])
            stored.pop("meta")
            assert stored == p
        store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([".txt", ".hl7", ".md", ".json", ".ndjson", ""]),
                          st.one_of(st.binary(max_size=120),
                                    st.sampled_from([b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\r",
                                                     b"MSH segments start messages\n", b"{}", b"\xef\xbb\xbfFHS|"]))),
                max_size=6))
def test_a_folder_of_anything_is_walked_without_crashing(files: list[tuple[str, bytes]]) -> None:
    """Every file is either read (then landed, kept as not mapped, or refused with a reason) or
    skipped as no format fhirtwin reads; the walk never stops on one."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for i, (suffix, data) in enumerate(files):
            (folder / f"f{i}{suffix}").write_bytes(data)
        store = Store(":memory:")
        summary = Ingestor(store, workers=0).ingest_paths([folder])
        assert summary.files + summary.skipped == len(files)
        assert len(summary.errors) == summary.rejected and len(summary.notes) == summary.not_mapped
        assert all(f"{folder}" in e for e in summary.errors)
        store.close()
