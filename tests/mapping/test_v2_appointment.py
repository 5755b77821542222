"""SIU^S12 → Appointment: SCH-11 (TQ[Appointment]) gives start and end, the patient is a
participant, and an Appointment whose times are not known is not booked (R4 app-3)."""

from __future__ import annotations

from ingest.hl7v2.convert import map_message

SIU = "\r".join([
    "MSH|^~\\&|SCHED|GHH|FHIRTWIN|HOSP|20240315090000-0500||SIU^S12^SIU_S12|SIU-0001|P|2.5.1",
    "SCH|APT100^SCHED|APT100^SCHED|||||FOLLOWUP^Follow-up visit^L||30|min^minutes^UCUM|"
    "^^30^20240320100000-0500^20240320103000-0500|||||||||||||||Booked",
    "PID|1||MRN1001^^^GHH^MR||DOE^JOHN^Q||19700415|M",
    "RGS|1|A",
    "AIS|1|A|99213^Office visit^CPT|20240320100000-0500|||30|min",
    "AIP|1|A|1234^SMITH^ANNA|D^Doctor||20240320100000-0500|||30|min",
])


def test_sch_11_gives_start_and_end_and_the_patient_takes_part() -> None:
    result = map_message(SIU)
    [appointment] = result.of_type("Appointment")
    assert appointment["start"] == "2024-03-20T10:00:00-05:00"
    assert appointment["end"] == "2024-03-20T10:30:00-05:00"
    assert appointment["status"] == "booked"
    actors = [p["actor"]["reference"] for p in appointment["participant"] if "actor" in p]
    assert f"Patient/{result.patient_id}" in actors
    assert any(a.startswith("Practitioner/") for a in actors)


def test_without_times_an_appointment_is_only_proposed() -> None:
    siu = SIU.replace("^^30^20240320100000-0500^20240320103000-0500", "")
    [appointment] = map_message(siu).of_type("Appointment")
    assert "start" not in appointment and "end" not in appointment
    assert appointment["status"] == "proposed"
