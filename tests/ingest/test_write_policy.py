"""A result's short PID and PV1 do not replace the Patient and Encounter an admission wrote; ADT does.

Both ways in: files (``Ingestor``) and the MLLP path (``map_batch`` + ``write_mapped``: prepared
batches), and the store's ``if_absent`` writes beneath them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingest.hl7v2.processor import Work, map_batch, write_mapped
from ingest.hl7v2.write_policy import create_only
from ingest.pipeline import Ingestor
from store.prepare import prepare
from store.store import Store

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"
ADMIT = FIXTURES / "context_adt_a01.hl7"  # full PID (address, phone, SSN) and PV1 (attending, admit time)
RESULT = FIXTURES / "context_oru_r01.hl7"  # the same patient and visit: PID with name, birth date, MRN only


def _message(path: Path) -> str:
    return path.read_text().replace("\n", "\r")


def _one(store: Store, rtype: str) -> dict[str, Any]:
    rows = store.cursor().execute(
        "SELECT id FROM resources_current WHERE resource_type = ? AND NOT deleted", [rtype]).fetchall()
    assert len(rows) == 1, rows
    return store.read(rtype, rows[0][0])


def _assert_admission_kept(store: Store) -> None:
    patient = _one(store, "Patient")
    assert patient["address"][0]["city"] == "SPRINGFIELD" and patient["telecom"]
    assert {i["value"] for i in patient["identifier"]} >= {"MRN1001", "999-88-7777"}
    assert patient["meta"]["versionId"] == "1"
    encounter = _one(store, "Encounter")
    assert encounter["period"]["start"].startswith("2024-03-01T08:00:00") and encounter["meta"]["versionId"] == "1"
    observation = _one(store, "Observation")  # the result itself is written, pointing at them
    assert observation["subject"]["reference"] == f"Patient/{patient['id']}"
    assert observation["valueQuantity"]["value"] == 95


def test_the_policy_names_what_only_admissions_replace() -> None:
    resources = [{"resourceType": t} for t in ("Patient", "Observation", "Encounter", "Practitioner")]
    assert create_only("ORU", resources) == {0, 2}
    assert create_only("ADT", resources) == frozenset()


def test_files_a_result_after_an_admission_keeps_the_admission(tmp_path: Path) -> None:
    store = Store()
    summary = Ingestor(store).ingest_paths([ADMIT, RESULT])
    assert summary.rejected == 0, summary.errors
    _assert_admission_kept(store)


def test_files_a_result_first_creates_the_patient_and_the_admission_then_replaces_it() -> None:
    store = Store()
    Ingestor(store).ingest_paths([RESULT])
    assert "address" not in _one(store, "Patient")
    Ingestor(store).ingest_paths([ADMIT])
    patient = _one(store, "Patient")
    assert patient["address"][0]["city"] == "SPRINGFIELD" and patient["meta"]["versionId"] == "2"


@pytest.mark.parametrize("order", [(ADMIT, RESULT), (RESULT, ADMIT)])
def test_mllp_batches_keep_the_admission_whatever_the_order_in_one_batch(order: tuple[Path, Path]) -> None:
    store = Store()
    works = [Work(i + 1, _message(path)) for i, path in enumerate(order)]
    outcomes = write_mapped(store, works, map_batch(works))
    assert [o.status for o in outcomes] == ["processed", "processed"]
    patient = _one(store, "Patient")
    assert patient["address"][0]["city"] == "SPRINGFIELD"
    assert patient["meta"]["versionId"] == "1"  # one batch, one version: the admission's
    # and a later result on its own changes nothing either
    again = [Work(3, _message(RESULT).replace("ORU-0002", "ORU-0003").replace("|95|", "|97|"))]
    write_mapped(store, again, map_batch(again))
    assert _one(store, "Patient") == patient
    assert _one(store, "Observation")["valueQuantity"]["value"] == 97


def _patient(family: str, **more: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", "name": [{"family": family}], **more}


def test_store_writes_if_absent_only_what_has_no_current_version() -> None:
    store = Store()
    (created,) = store.write([_patient("Short")], if_absent={0})
    assert created.outcome == "created"
    store.write([_patient("Full", gender="male")])
    (kept,) = store.write([_patient("Short")], if_absent={0})
    assert (kept.outcome, kept.version_id) == ("unchanged", 2)
    assert store.read("Patient", "p1")["name"][0]["family"] == "Full"
    # earlier in the same batch: the first one stands; a later plain write still replaces
    first, second = store.write([_patient("Batch"), _patient("Short")], if_absent={1})
    assert (first.outcome, second.outcome) == ("updated", "unchanged")
    assert store.read("Patient", "p1")["name"][0]["family"] == "Batch"
    store.delete("Patient", "p1")
    (again,) = store.write([_patient("Short")], if_absent={0})  # deleted: nothing current to keep
    assert (again.outcome, again.version_id) == ("created", 5)


def test_prepared_batches_carry_their_positions_past_refused_resources() -> None:
    store = Store()
    store.write([_patient("Full")])
    prepared, refused = prepare([{"resourceType": "Patient", "id": "bad id"}, _patient("Short"),
                                 {**_patient("Other"), "id": "p2"}], if_absent={1, 2})
    assert [pos for pos, _ in refused] == [0] and prepared.if_absent == {0, 1}
    kept, created = store.write_prepared(prepared)
    assert (kept.outcome, created.outcome) == ("unchanged", "created")
    assert store.read("Patient", "p1")["name"][0]["family"] == "Full"
