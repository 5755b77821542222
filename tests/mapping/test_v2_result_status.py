"""OBX-11 (HL7 table 0085) → Observation.status through the IG's vocabulary map (codes the IG leaves
unmapped are ``unknown``); a value that was sent is never also absent."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.hl7v2.convert import map_message

HEAD = "\r".join([
    "MSH|^~\\&|LAB|GHH|FHIRTWIN|HOSP|20240316101500-0500||ORU^R01^ORU_R01|ST-0001|P|2.5.1",
    "PID|1||MRN1001^^^GHH^MR||DOE^JOHN^Q||19700415|M",
    "OBR|1|PLC700^EPIC|FIL700^LAB|24323-8^CMP^LN|||20240316080000|||||||||||||||20240316100000|||F",
])


def _observation(obx: str) -> dict[str, Any]:
    [observation] = map_message(f"{HEAD}\r{obx}").of_type("Observation")
    return observation


@pytest.mark.parametrize(("code", "status"), [
    ("F", "final"), ("P", "preliminary"), ("C", "corrected"), ("A", "amended"), ("D", "entered-in-error"),
    ("W", "entered-in-error"), ("X", "cancelled"),
    ("I", "unknown"), ("R", "unknown"), ("S", "unknown"), ("U", "unknown"), ("V", "unknown"),
    ("B", "unknown"),  # "not mapped" in the IG's ConceptMap table-hl70085-to-observation-status 1.0.0
])
def test_result_status(code: str, status: str) -> None:
    observation = _observation(f"OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||{code}")
    assert observation["status"] == status


def test_not_asked_with_a_value_keeps_the_value_and_no_absent_reason() -> None:
    observation = _observation("OBX|1|NM|17861-6^Calcium^LN||9.5|mg/dL|8.5-10.5|N|||N")
    assert observation["valueQuantity"]["value"] == 9.5
    assert "dataAbsentReason" not in observation


def test_not_asked_without_a_value_says_why() -> None:
    observation = _observation("OBX|1|NM|17861-6^Calcium^LN|||mg/dL|8.5-10.5||||N")
    assert not any(k.startswith("value") for k in observation)
    assert observation["dataAbsentReason"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-asked"}]
