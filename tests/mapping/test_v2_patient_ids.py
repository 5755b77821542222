"""A Patient's id comes from its medical record number (PID-3 repetition with CX.5 = MR)
wherever PID-3 sends it, else from the first identifier: an update listing SSN~MRN is the
patient the admission listing MRN~SSN made, and what refers to the patient follows."""

from __future__ import annotations

from typing import Any

from ingest.hl7v2.convert import map_message
from mapping.v2 import forget

A01 = "\r".join([
    "MSH|^~\\&|EPIC|GHH|FHIRTWIN|HOSP|20240301090000-0500||ADT^A01^ADT_A01|A01-{n}|P|2.5.1",
    "EVN|A01|20240301085900-0500",
    "PID|1||{pid3}||DOE^JOHN^Q||19700415|M",
    "PV1|1|I|4W^402^B^GHH||||||||||||||||V{n}^^^GHH^VN",
])
MRN = "MRN{n}^^^GHH&2.16.840.1.113883.3.999&ISO^MR"
SSN = "999-88-{n}^^^SSA^SS"


def _message(n: int, pid3: str, event: str = "A01") -> str:
    return A01.replace("A01", event).format(n=n, pid3=pid3.format(n=n))


def _patient_and_references(result: Any) -> tuple[str, set[str]]:
    [patient] = result.of_type("Patient")
    [encounter] = result.of_type("Encounter")
    [provenance] = result.of_type("Provenance")
    refs = {encounter["subject"]["reference"]}
    refs |= {t["reference"] for t in provenance["target"] if t["reference"].startswith("Patient/")}
    assert result.patient_id == patient["id"]
    return patient["id"], refs


def test_mrn_after_ssn_gives_the_admission_patient() -> None:
    admitted, _ = _patient_and_references(map_message(_message(1001, f"{MRN}~{SSN}")))
    updated, refs = _patient_and_references(map_message(_message(1001, f"{SSN}~{MRN}", "A08")))
    assert updated == admitted
    assert refs == {f"Patient/{admitted}"}
    [patient] = map_message(_message(1001, f"{SSN}~{MRN}", "A08")).of_type("Patient")
    assert [i["value"] for i in patient["identifier"]] == ["999-88-1001", "MRN1001"]  # both kept, as sent


def test_without_mrn_the_first_identifier_counts() -> None:
    first = map_message(_message(7, f"{SSN}~PP{{n}}^^^USA^PPN")).patient_id
    assert first == map_message(_message(7, SSN)).patient_id
    assert first != map_message(_message(7, f"PP{{n}}^^^USA^PPN~{SSN}")).patient_id


def test_the_preference_holds_on_the_templated_path() -> None:
    """After hundreds of new patients the Patient is filled from a template with its identifier
    texts left out; the id must still follow the MR repetition."""
    forget()
    for n in range(300):
        assert (map_message(_message(n, f"{SSN}~{MRN}", "A08")).patient_id
                == map_message(_message(n, f"{MRN}~{SSN}")).patient_id), n
