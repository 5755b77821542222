"""FHIR file readers: NDJSON (plain, gzip), JSON, Bundles; bad input is refused precisely and kept."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.bundles import unpack_bundle
from ingest.pipeline import Ingestor
from store.store import Store


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ndjson_and_gzip_with_bad_lines_keep_the_good(tmp_path: Path) -> None:
    lines = [
        '{"resourceType":"Patient","id":"a"}',
        '{"resourceType":"Patient","id":',
        "[1, 2]",
        '{"id":"no-type"}',
        '{"resourceType":"Patient","id":"b"}',
    ]
    plain = _write_lines(tmp_path / "p.ndjson", lines)
    gz = tmp_path / "q.ndjson.gz"
    gz.write_bytes(gzip.compress(b'{"resourceType":"Patient","id":"c"}\n\xff\xfe\n'))
    store = Store(":memory:")
    summary = Ingestor(store).ingest_paths([plain, gz])
    assert summary.accepted == 3
    assert summary.rejected == 4
    assert {i for (_, i) in [("Patient", k) for k in ("a", "b", "c")] if store.read("Patient", i)} == {"a", "b", "c"}
    where = [e.split(": ", 1)[0] for e in summary.errors]
    assert where == [f"{plain}:2", f"{plain}:3", f"{plain}:4", f"{gz}:2"]
    letters = store.dead_letters()
    assert len(letters) == 4
    assert letters[2]["reason"][0]["expression"] == ["resourceType"]
    assert letters[0]["raw"] == '{"resourceType":"Patient","id":'


def test_replayed_file_changes_nothing(tmp_path: Path, synthea_dir: Path) -> None:
    store = Store(":memory:")
    first = Ingestor(store).ingest_paths([synthea_dir / "ndjson" / "Condition.ndjson"])
    again = Ingestor(store).ingest_paths([synthea_dir / "ndjson" / "Condition.ndjson"])
    assert first.accepted == again.unchanged and again.accepted == 0
    total, _ = store.history("Condition")
    assert total == first.accepted


def test_transaction_bundle_resolves_urn_uuid_references(synthea_dir: Path) -> None:
    bundle_path = sorted((synthea_dir / "bundles").glob("*.json"))[0]
    bundle = orjson.loads(bundle_path.read_bytes())
    resources, problems = unpack_bundle(bundle)
    assert not problems
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    obs = [r for r in resources if r["resourceType"] == "Observation"]
    assert obs and all(o["subject"]["reference"] == f"Patient/{patient['id']}" for o in obs)
    assert "urn:uuid:" not in orjson.dumps(resources).decode()


def test_bundle_with_dangling_reference_is_refused_whole() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
             "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "urn:uuid:33333333-3333-3333-3333-333333333333"}},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    resources, problems = unpack_bundle(bundle)
    assert resources == []
    assert problems[0].expression == "Bundle.entry[1].resource"
    assert "urn:uuid:3333" in problems[0].diagnostics


def test_duplicate_ids_in_transaction_are_refused() -> None:
    entry = {"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "PUT", "url": "Patient/x"}}
    _, problems = unpack_bundle({"resourceType": "Bundle", "type": "transaction", "entry": [entry, entry]})
    assert problems and problems[0].code == "duplicate"


def test_transaction_file_resolves_conditional_references(tmp_path: Path) -> None:
    store = Store(":memory:")
    store.write([{"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:mrn", "value": "42"}]}])
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:44444444-4444-4444-4444-444444444444",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "Patient?identifier=urn:mrn|42"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    good = tmp_path / "tx.json"
    good.write_bytes(orjson.dumps(bundle))
    assert Ingestor(store).ingest_paths([good]).accepted == 1
    obs = store.read("Observation", "44444444-4444-4444-4444-444444444444")
    assert obs["subject"]["reference"] == "Patient/p1"
    bundle["entry"][0]["resource"]["subject"]["reference"] = "Patient?identifier=urn:mrn|nobody"
    bad = tmp_path / "tx2.json"
    bad.write_bytes(orjson.dumps(bundle))
    summary = Ingestor(store).ingest_paths([bad])
    assert summary.rejected == 1 and "does not match exactly one" in summary.errors[0]


@pytest.mark.parametrize(("damage", "expression"), [
    (lambda b: b.update(type=[]), "Bundle.type"),
    (lambda b: b.update(entry={"resource": {}}), "Bundle.entry"),
    (lambda b: b["entry"][0].update(fullUrl=-1), "Bundle.entry[0].fullUrl"),
    (lambda b: b["entry"].append({"request": "DELETE"}), "Bundle.entry[1].resource"),
])
def test_a_malformed_bundle_is_refused_with_where_never_raised(damage: Any, expression: str) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0e5bd4f2-3f0e-4b29-9ad0-8f6d8c1b1d11", "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}}]}
    damage(bundle)
    resources, problems = unpack_bundle(bundle)
    assert resources == [] and expression in [p.expression for p in problems]
