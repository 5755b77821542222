"""ADT → Patient, Encounter, RelatedPerson, AllergyIntolerance, Condition, Procedure, Coverage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fhirclient.models.fhirelementfactory import FHIRElementFactory
from support import map_v2_fixture

from ingest.hl7v2.convert import map_message

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"


@pytest.fixture(scope="module")
def a01() -> Any:
    return map_v2_fixture("adt_a01_admit.hl7")


def test_patient_demographics(a01: Any) -> None:
    [patient] = a01.of_type("Patient")
    mrn, ssn = patient["identifier"]
    assert (mrn["value"], mrn["system"], mrn["type"]["coding"][0]["code"]) == ("MRN001", "urn:oid:1.2.3.4", "MR")
    assert (ssn["value"], ssn["system"]) == ("123-45-6789", "http://hl7.org/fhir/sid/us-ssn")
    assert patient["name"] == [{"family": "Doe", "given": ["Jane", "Q"], "prefix": ["Ms"]}]
    assert patient["birthDate"] == "1970-02-14"
    assert patient["gender"] == "female"
    assert patient["address"][0] == {
        "line": ["1 Main St"], "city": "Springfield", "state": "IL", "postalCode": "62701"
    }
    assert patient["telecom"][0]["value"] == "(217)555-0100"
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    assert a01.patient_id == patient["id"]


def test_encounter_with_period_in_sender_time_zone(a01: Any) -> None:
    [enc] = a01.of_type("Encounter")
    assert enc["subject"] == {"reference": f"Patient/{a01.patient_id}"}
    assert enc["class"]["code"] == "IMP"
    assert enc["period"]["start"] == "2026-03-01T08:00:00+01:00"
    assert enc["identifier"][0]["value"] == "V100"
    [doc] = a01.of_type("Practitioner")
    assert doc["name"][0]["family"] == "Welby"
    assert enc["participant"][0]["individual"] == {"reference": f"Practitioner/{doc['id']}"}
    [loc] = a01.of_type("Location")
    assert enc["location"][0]["location"] == {"reference": f"Location/{loc['id']}"}


def test_next_of_kin_allergy_diagnosis_procedure_coverage(a01: Any) -> None:
    subject = {"reference": f"Patient/{a01.patient_id}"}
    [kin] = a01.of_type("RelatedPerson")
    assert kin["patient"] == subject and kin["name"][0]["family"] == "Doe"
    assert any(c.get("code") == "SPO" for c in kin["relationship"][0]["coding"])
    [allergy] = a01.of_type("AllergyIntolerance")
    assert allergy["patient"] == subject
    assert allergy["code"]["coding"][0] == {
        "code": "70618", "display": "Penicillin", "system": "http://www.nlm.nih.gov/research/umls/rxnorm"
    }
    assert allergy["criticality"] == "high"
    [condition] = a01.of_type("Condition")
    assert condition["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10-cm"
    assert condition["code"]["coding"][0]["code"] == "N18.6"
    [proc] = a01.of_type("Procedure")
    assert proc["code"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert proc["code"]["coding"][0]["code"] == "302497006"
    assert proc["performedDateTime"] == "2026-03-01T09:00:00+01:00"
    [coverage] = a01.of_type("Coverage")
    assert coverage["beneficiary"] == subject
    [org] = [o for o in a01.of_type("Organization") if o.get("name") == "Acme Insurance"]
    assert coverage["payor"] == [{"reference": f"Organization/{org['id']}"}]


def test_a08_update_gives_the_same_patient_and_encounter_ids(a01: Any) -> None:
    a08 = map_v2_fixture("adt_a08_update.hl7")
    assert a08.patient_id == a01.patient_id
    assert a08.of_type("Encounter")[0]["id"] == a01.of_type("Encounter")[0]["id"]
    assert a08.of_type("Patient")[0]["name"][0]["given"] == ["Jane", "Quinn"]


def test_a40_merge_links_both_patients() -> None:
    result = map_v2_fixture("ADT-A40-01.hl7")
    survivor, merged = result.of_type("Patient")
    assert survivor["identifier"][0]["value"] == "12345"
    assert merged["identifier"][0]["value"] == "56789"
    assert survivor["link"] == [{"type": "replaces", "other": {"reference": f"Patient/{merged['id']}"}}]
    assert merged["link"] == [{"type": "replaced-by", "other": {"reference": f"Patient/{survivor['id']}"}}]
    assert merged["active"] is False
    assert result.patient_id == survivor["id"]


def test_a40_merged_patient_id_matches_its_own_admission() -> None:
    merged_id = map_v2_fixture("ADT-A40-01.hl7").of_type("Patient")[1]["id"]
    admit = "MSH|^~\\&|A|B|C|D|20260301||ADT^A01^ADT_A01|9|P|2.5\rEVN|A01\rPID|1||56789^^^BCBS^MR||X^Y\rPV1|1|I"
    assert map_message(admit).patient_id == merged_id


def test_a47_identifier_change() -> None:
    result = map_v2_fixture("ADT-A47-01.hl7")
    new, old = result.of_type("Patient")
    assert new["identifier"][0]["value"] == "MR101" and old["identifier"][0]["value"] == "MR102"
    assert new["link"][0]["type"] == "replaces"


@pytest.mark.parametrize(
    "event", ["A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A12", "A13", "A28", "A31"]
)
def test_adt_events_map_to_patient_and_encounter(event: str) -> None:
    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hl7v2" / "fhir-converter-messages"
    sample = path / f"ADT-{event}-01.hl7"
    if sample.exists():
        raw = sample.read_bytes()
    else:  # no sample of this event: the admit fixture re-labelled (A12 cancels a transfer, same structure)
        raw = (FIXTURES / "adt_a01_admit.hl7").read_bytes().replace(b"ADT^A01^ADT_A01", f"ADT^{event}".encode())
    result = map_message(raw)
    assert result.mapped
    assert len(result.of_type("Patient")) == 1
    assert result.of_type("Provenance")
    for res in result.resources:
        FHIRElementFactory.instantiate(res["resourceType"], res)
        if res["resourceType"] in ("Encounter", "Condition", "AllergyIntolerance"):
            ref = res.get("subject") or res.get("patient")
            assert ref == {"reference": f"Patient/{result.patient_id}"}


def test_v28_rich_message_escapes_and_offsets() -> None:
    result = map_v2_fixture("fc_ADT_A01_v28_rich_escapes.hl7")
    [patient] = result.of_type("Patient")
    assert patient["name"][0]["family"] == "EVERYMAN"
    [prov] = result.of_type("Provenance")
    assert prov["recorded"] == "1989-08-18T11:26:00+02:15"


@pytest.mark.parametrize(("pid7", "birth_time"), [
    ("20180205", None),  # a date: no time to keep
    ("201802051430", "2018-02-05T14:30:00Z"),
    ("20180205143015+0100", "2018-02-05T14:30:15+01:00"),
])
def test_birth_time_goes_to_the_patient_birth_time_extension(pid7: str, birth_time: str | None) -> None:
    """PID-7 longer than a date: the IG's row IF PID-7 LENGTH GREATER THAN 8 (patient-birthTime)."""
    admit = f"MSH|^~\\&|A|B|C|D|20260301||ADT^A01^ADT_A01|9|P|2.5\rEVN|A01\rPID|1||5^^^H^MR||X^Y||{pid7}\rPV1|1|I"
    [patient] = map_message(admit).of_type("Patient")
    assert patient["birthDate"] == "2018-02-05"
    if birth_time is None:
        assert "_birthDate" not in patient
    else:
        assert patient["_birthDate"] == {"extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": birth_time}]}
    FHIRElementFactory.instantiate("Patient", patient)


def test_discharge_finishes_the_encounter_the_admission_began() -> None:
    """PV1-45 valued: the IG's row writes status="finished" in its path column; the visit number keeps
    one Encounter across A01 and A03."""
    pv1 = ["PV1", "1", "I", "W1^101^1", *[""] * 3, "1234^Smith^John", "", "", "MED", *[""] * 8, "V100^^^H^VN",
           *[""] * 24, "20260301080000", "{discharge}"]
    message = ("MSH|^~\\&|ADT|H|EHR|H|20260301090000||ADT^{event}^ADT_A01|c{event}|P|2.5.1\r"
               "EVN|{event}|20260301090000\rPID|1||555^^^H^MR||Doe^Jane||19700101|F\r" + "|".join(pv1) + "\r")
    [admitted] = map_message(message.format(event="A01", discharge="")).of_type("Encounter")
    [discharged] = map_message(message.format(event="A03", discharge="20260305100000")).of_type("Encounter")
    assert admitted["id"] == discharged["id"]
    assert (admitted["status"], admitted["period"]) == ("in-progress", {"start": "2026-03-01T08:00:00Z"})
    assert discharged["status"] == "finished"
    assert discharged["period"] == {"start": "2026-03-01T08:00:00Z", "end": "2026-03-05T10:00:00Z"}


@pytest.mark.parametrize("header", ["ADT^A11^ADT_A09", "ADT^A11"])
def test_cancelled_admission_cancels_the_encounter(header: str) -> None:
    """A11 is grouped as ADT_A09; the IG's ADT_A11 table sets the Encounter's status from the trigger
    event (MSH-9.2 through MSG[code] and Event[EncounterStatus]: A11 → cancelled)."""
    pv1 = ["PV1", "1", "I", "W1^101^1", *[""] * 15, "V100^^^H^VN"]
    text = (f"MSH|^~\\&|ADT|H|EHR|H|20260301090000||{header}|c1|P|2.5.1\rEVN|A11|20260301090000\r"
            "PID|1||555^^^H^MR||Doe^Jane||19700101|F\r" + "|".join(pv1) + "\r")
    [encounter] = map_message(text).of_type("Encounter")
    admit = text.replace(header, "ADT^A01^ADT_A01").replace("EVN|A11", "EVN|A01")
    [admitted] = map_message(admit).of_type("Encounter")
    assert (encounter["status"], admitted["status"]) == ("cancelled", "in-progress")
    assert encounter["id"] == admitted["id"]
