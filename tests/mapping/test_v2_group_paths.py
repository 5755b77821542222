"""The IG names group paths of the newest structures (``ORDER_OBSERVATION.COMMON_ORDER.ORC``,
``SPECIMEN.SPECIMEN_OBSERVATION.OBX``); messages of v2.3-2.6 are grouped by the v2.5.1
structures, which lack those groups. Their segments map all the same, and to the same ids."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.hl7v2.convert import map_message

ORU = "\r".join([
    "MSH|^~\\&|LAB|GHH|FHIRTWIN|HOSP|20240306101500+0100||ORU^R01^ORU_R01|ORU-0003|P|{version}",
    "PID|1||MRN1001^^^GHH&2.16.840.1.113883.3.999&ISO^MR||DOE^JOHN^Q||19700415|M",
    "ORC|RE|PLC300^EPIC|FIL300^LAB||CM|||||||5678^JONES^BOB",
    "OBR|1|||24323-8^Comprehensive metabolic panel^LN|||20240306080000|||||||||||||||20240306100000|||F",
    "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F",
])

SPECIMEN_OBX = "\r".join([
    "MSH|^~\\&|LAB|GHH|FHIRTWIN|HOSP|20240307101500-0500||ORU^R01^ORU_R01|ORU-0010|P|2.5.1",
    "PID|1||MRN2002^^^GHH^MR||ROE^JANE||19800101|F",
    "ORC|RE|PLC400^EPIC|FIL400^LAB||CM",
    "OBR|1|PLC400^EPIC|FIL400^LAB|58410-2^CBC panel^LN|||20240307080000|||||||||||||||20240307100000|||F",
    "OBX|1|NM|718-7^Hemoglobin^LN||13.5|g/dL|12.0-16.0|N|||F",
    "SPM|1|SP400^LAB||BLD^Blood^HL70487|||||||||||||20240307080000",
    "OBX|2|NM|33747-0^Specimen volume^LN||5|mL|||||F",
])


def _ids(result: Any) -> list[tuple[str, str]]:
    return [(r["resourceType"], r["id"]) for r in result.resources if r["resourceType"] != "Provenance"]


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5.1", "2.6", "2.8"])
def test_orc_fills_report_and_request_in_every_version(version: str) -> None:
    result = map_message(ORU.format(version=version))
    [report] = result.of_type("DiagnosticReport")
    [request] = result.of_type("ServiceRequest")
    assert [i["value"] for i in report["identifier"]] == ["PLC300", "FIL300"]
    assert [i["type"]["coding"][0]["code"] for i in report["identifier"]] == ["PLAC", "FILL"]
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{request['id']}"}]
    assert [i["value"] for i in request["identifier"]] == ["PLC300", "FIL300"]
    assert request["status"] == "completed"  # ORC-5 CM
    assert request["code"]["coding"][0]["code"] == "24323-8"


def test_old_and_new_structures_give_the_same_ids() -> None:
    """ORC's order numbers count for the observations whether ORC is in ORDER_OBSERVATION or
    in its COMMON_ORDER group: a feed moving to v2.8 updates the resources it made before."""
    reference = _ids(map_message(ORU.format(version="2.8")))
    for version in ("2.3", "2.5.1", "2.6"):
        assert _ids(map_message(ORU.format(version=version))) == reference


def test_observation_of_a_specimen_maps_in_v251() -> None:
    result = map_message(SPECIMEN_OBX)
    [volume] = [o for o in result.of_type("Observation") if o["code"]["coding"][0]["code"] == "33747-0"]
    [specimen] = [s for s in result.of_type("Specimen") if s.get("identifier")]
    assert volume["valueQuantity"]["value"] == 5
    assert volume["valueQuantity"]["code"] == "mL"
    assert volume["focus"] == [{"reference": f"Specimen/{specimen['id']}"}]
    assert volume["subject"] == {"reference": f"Patient/{result.patient_id}"}
    [report] = result.of_type("DiagnosticReport")
    [hemoglobin] = [o for o in result.of_type("Observation") if o["code"]["coding"][0]["code"] == "718-7"]
    assert {"reference": f"Observation/{hemoglobin['id']}"} in report["result"]
