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


# Resources sent in part are combined with what is stored (``merges`` in the policy's data file).
OLD_ADMIT = ("MSH|^~\\&|ADT|H|EHR|H|20190401090000||ADT^A01^ADT_A01|adm-56789|P|2.8\r"
             "EVN|A01|20190401090000\r"
             "PID|1||56789^^^BCBS^MR||Berry^Alice^M||19700102|F|||9 Old Road^^Cary^NC^27511\r"
             "PV1|1|I|W1^101^1\r")
MERGE = (FIXTURES / "ADT-A40-01.hl7").read_text().replace("\n", "\r")


def _patients_by_mrn(store: Store) -> dict[str, dict[str, Any]]:
    rows = store.cursor().execute(
        "SELECT id FROM resources_current WHERE resource_type = 'Patient' AND NOT deleted").fetchall()
    out = {}
    for (rid,) in rows:
        res = store.read("Patient", rid)
        out[res["identifier"][0]["value"]] = res
    return out


def _assert_merged_away_keeps_its_demographics(store: Store) -> None:
    patients = _patients_by_mrn(store)
    old, survivor = patients["56789"], patients["12345"]
    assert old["name"][0]["family"] == "Berry" and old["birthDate"] == "1970-01-02"
    assert old["address"][0]["city"] == "Cary"
    assert old["active"] is False
    assert old["link"] == [{"type": "replaced-by", "other": {"reference": f"Patient/{survivor['id']}"}}]
    assert survivor["link"] == [{"type": "replaces", "other": {"reference": f"Patient/{old['id']}"}}]


def test_files_a_merge_keeps_the_demographics_of_the_record_it_retires(tmp_path: Path) -> None:
    admit, merge = tmp_path / "admit.hl7", tmp_path / "merge.hl7"
    admit.write_text(OLD_ADMIT)
    merge.write_text(MERGE)
    store = Store()
    Ingestor(store).ingest_paths([admit])
    Ingestor(store).ingest_paths([merge])
    _assert_merged_away_keeps_its_demographics(store)
    Ingestor(store).ingest_paths([merge])  # the merge sent again changes nothing
    assert _patients_by_mrn(store)["56789"]["meta"]["versionId"] == "2"
    # one file holding both: the merge applies to the admission written just before it
    both = tmp_path / "both.hl7"
    both.write_text(OLD_ADMIT + MERGE)
    store = Store()
    Ingestor(store).ingest_paths([both])
    _assert_merged_away_keeps_its_demographics(store)


def test_files_a_merge_of_an_unknown_record_writes_what_the_message_says(tmp_path: Path) -> None:
    merge = tmp_path / "merge.hl7"
    merge.write_text(MERGE)
    store = Store()
    Ingestor(store).ingest_paths([merge])
    old = _patients_by_mrn(store)["56789"]
    assert old["active"] is False and "name" not in old


@pytest.mark.parametrize("together", [True, False])
def test_mllp_a_merge_keeps_the_demographics_of_the_record_it_retires(together: bool) -> None:
    store = Store()
    works = [Work(1, OLD_ADMIT), Work(2, MERGE)]
    batches = [works] if together else [[w] for w in works]
    for batch in batches:
        assert [o.status for o in write_mapped(store, batch, map_batch(batch))] == ["processed"] * len(batch)
    _assert_merged_away_keeps_its_demographics(store)


def _result(control: str, obx5: str, units: str, status: str) -> str:
    return (f"MSH|^~\\&|LAB|H|EHR|H|20260301120000||ORU^R01^ORU_R01|{control}|P|2.5.1\r"
            "PID|1||555^^^H^MR||Doe^Jane\r"
            "OBR|1|P1|F1|2345-7^Glucose^LN|||20260301110000\r"
            f"OBX|1|NM|2345-7^Glucose^LN|1|{obx5}|{units}|||||{status}|||20260301110000\r")


@pytest.mark.parametrize("path", ["files", "mllp"])
def test_a_status_change_without_the_value_keeps_the_value(path: str, tmp_path: Path) -> None:
    store = Store()
    messages = [_result("r1", "105", "mg/dL^mg/dL^UCUM", "P"), _result("r2", "", "", "U")]
    for i, text in enumerate(messages):
        if path == "files":
            f = tmp_path / f"{i}.hl7"
            f.write_text(text)
            Ingestor(store).ingest_paths([f])
        else:
            write_mapped(store, [Work(i + 1, text)], map_batch([Work(i + 1, text)]))
    observation = _one(store, "Observation")
    assert observation["valueQuantity"]["value"] == 105 and observation["meta"]["versionId"] == "2"
    assert observation["status"] != "preliminary"  # the status is the new message's
    # a corrected value still replaces it
    text = _result("r3", "110", "mg/dL^mg/dL^UCUM", "C")
    write_mapped(store, [Work(3, text)], map_batch([Work(3, text)]))
    assert _one(store, "Observation")["valueQuantity"]["value"] == 110


@pytest.mark.parametrize(("obx2", "obx5", "status"), [
    ("NM", '""', "C"),  # the explicit null: the sender deletes the value
    ("NM", "", "C"),  # a correction without a value
    ("", "NEG^Negative^L", "C"),  # a value that cannot be read without its type (warned)
    ("NM", "", "W"),  # posted as wrong
])
def test_a_correction_without_a_readable_value_replaces_the_value(obx2: str, obx5: str, status: str) -> None:
    """Only a status change (OBX-11 = U: status unknown) keeps the value sent before."""
    store = Store()
    for i, text in enumerate([_result("r1", "105", "mg/dL^mg/dL^UCUM", "F"),
                              _result("r2", obx5, "", status).replace("|NM|", f"|{obx2}|")]):
        write_mapped(store, [Work(i + 1, text)], map_batch([Work(i + 1, text)]))
    observation = _one(store, "Observation")
    assert observation["meta"]["versionId"] == "2"
    assert "valueQuantity" not in observation and "valueCodeableConcept" not in observation
