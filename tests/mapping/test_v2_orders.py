"""Orders, pharmacy, immunization, documents, scheduling, and unmapped messages."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from support import map_v2_fixture

from ingest.hl7v2.convert import map_message

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def ras() -> Any:
    return map_v2_fixture("ras_o17_insulin_vancomycin.hl7")


def test_ras_bolus_dose_in_units_at_a_point_in_time(ras: Any) -> None:
    bolus = ras.of_type("MedicationAdministration")[0]
    assert bolus["effectiveDateTime"] == "2026-03-02T08:00:00+01:00"
    assert "effectivePeriod" not in bolus
    assert bolus["dosage"]["dose"] == {"value": 5, "code": "U", "unit": "unit", "system": UCUM}
    assert bolus["dosage"]["route"]["coding"][0]["code"] == "SC"
    assert bolus["status"] == "completed"
    assert bolus["medicationCodeableConcept"]["coding"][0] == {
        "code": "311041", "display": "Insulin aspart 100 UNT/ML", "system": RXNORM
    }
    assert bolus["subject"] == {"reference": f"Patient/{ras.patient_id}"}


def test_ras_basal_rate_has_period_and_rate_quantity(ras: Any) -> None:
    basal = ras.of_type("MedicationAdministration")[1]
    assert basal["effectivePeriod"] == {"start": "2026-03-02T09:00:00+01:00", "end": "2026-03-02T15:00:00+01:00"}
    assert basal["dosage"]["rateQuantity"]["code"] == "U/h"
    assert basal["dosage"]["rateQuantity"]["value"] == 1.2
    assert "dose" not in basal["dosage"]


def test_ras_infusion_dose_in_mg_over_a_period_linked_to_its_order(ras: Any) -> None:
    vanco = ras.of_type("MedicationAdministration")[2]
    assert vanco["dosage"]["dose"] == {"value": 1250, "unit": "MG", "system": UCUM, "code": "mg"}
    assert vanco["effectivePeriod"]["end"] == "2026-03-02T21:00:00+01:00"
    requests = {r["id"]: r for r in ras.of_type("MedicationRequest")}
    order = requests[vanco["request"]["reference"].split("/")[1]]
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "11124"
    assert order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["code"] == "mg"
    assert "IV" in [c["code"] for c in order["dosageInstruction"][0]["route"]["coding"]]
    ids = [m["id"] for m in ras.of_type("MedicationAdministration")]
    assert len(set(ids)) == 3


def test_rde_medication_request() -> None:
    result = map_v2_fixture("RDE-O11-01.hl7")
    [req] = result.of_type("MedicationRequest")
    assert req["intent"] == "order" and req["status"] == "active"
    assert req["medicationCodeableConcept"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/ndc"
    [given] = [d for d in req["dosageInstruction"] if "doseAndRate" in d and "route" in d]  # RXE + RXR
    dose = given["doseAndRate"][0]
    assert dose["doseQuantity"]["value"] == 5
    assert dose["rateQuantity"]["code"] == "mL/h"
    assert given["route"]["coding"][0]["code"] == "IVINJ"
    timings = [d["timing"]["code"]["coding"][0]["code"] for d in req["dosageInstruction"] if "timing" in d]
    assert timings == ["TID", "P"]  # each TQ1 keeps its own timing
    assert req["subject"] == {"reference": f"Patient/{result.patient_id}"}


def test_rds_medication_dispense() -> None:
    result = map_v2_fixture("RDS-O13-01.hl7")
    [disp] = result.of_type("MedicationDispense")
    assert disp["medicationCodeableConcept"]["coding"][0]["code"] == "01151327"
    assert disp["quantity"]["value"] == 10
    assert disp["quantity"]["system"] == "http://snomed.info/sct"  # tablets are coded, not UCUM
    assert disp["whenHandedOver"] == "2020-12-12"


@pytest.mark.parametrize("name", ["v2tofhir_ORM_O01.hl7", "v2tofhir_OML_O21.hl7", "fc_OML_O21.hl7"])
def test_orders_become_service_requests(name: str) -> None:
    result = map_v2_fixture(name)
    requests = result.of_type("ServiceRequest")
    assert requests
    for req in requests:
        assert req["intent"] == "order"
        assert req["subject"] == {"reference": f"Patient/{result.patient_id}"}
    assert any(c.get("system") == "http://loinc.org" for r in requests for c in r.get("code", {}).get("coding", []))


def test_vxu_immunization() -> None:
    """Three ORDER groups share one order number and hold three administrations: three Immunizations."""
    result = map_v2_fixture("v2tofhir_VXU_V04.hl7")
    imm, *historical = result.of_type("Immunization")
    assert [h["occurrenceDateTime"] for h in historical] == ["2014-10-12", "2013-11-12"]
    assert imm["vaccineCode"]["coding"][0]["code"] == "49281-0215-88"
    assert imm["occurrenceDateTime"] == "2015-06-24T08:30:00-05:00"
    assert imm["doseQuantity"] == {"value": 0.5, "code": "mL", "unit": "mL", "system": UCUM}
    assert imm["patient"] == {"reference": f"Patient/{result.patient_id}"}
    assert imm["status"] == "completed"


def test_mdm_document_reference_carries_the_text() -> None:
    result = map_v2_fixture("v2tofhir_MDM_T02.hl7")
    [doc] = result.of_type("DocumentReference")
    texts = [base64.b64decode(c["attachment"]["data"]).decode() for c in doc["content"]
             if c["attachment"].get("contentType", "").startswith("text/")]
    assert any("Critical Values Entered On" in t for t in texts)
    assert any("\n" in t for t in texts)  # \.br\ became a line break
    assert doc["subject"] == {"reference": f"Patient/{result.patient_id}"}
    assert doc["status"] == "current"
    pdf = [c["attachment"] for c in doc["content"] if c["attachment"].get("contentType") == "PDF"]
    assert pdf and "data" not in pdf[0]  # the sample's "<Base64 encoded>" placeholder is not base64


def test_siu_appointment_with_participants() -> None:
    result = map_v2_fixture("v2tofhir_SIU_S12.hl7")
    [appt] = result.of_type("Appointment")
    assert appt["minutesDuration"] == 15
    actors = [p["actor"]["reference"] for p in appt["participant"] if "actor" in p]
    practitioners = {f"Practitioner/{p['id']}" for p in result.of_type("Practitioner")}
    assert len(actors) >= 2 and set(actors) <= practitioners | {f"Patient/{result.patient_id}"}
    assert all(p["status"] == "accepted" for p in appt["participant"])


@pytest.mark.parametrize(
    "raw",
    [
        "MSH|^~\\&|A|B|C|D|20260301||BAR^P01^BAR_P01|1|P|2.5\rEVN|P01\rPID|1||X",
        "MSH|^~\\&|A|B|C|D|20260301||ZZZ^Z01|1|P|2.5\rZZ1|1",
    ],
)
def test_other_message_types_are_reported_as_not_mapped(raw: str) -> None:
    result = map_message(raw)
    assert result.mapped is False
    assert result.resources == []
    assert "not mapped" in result.notes[0]
