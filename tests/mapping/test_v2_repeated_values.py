"""A repeated OBX-5 maps as the IG's OBX[Observation-Component] sheet says: one
``Observation.component`` per repetition, each with OBX-3 as its code and the repetition as its
value (OBX-6 units and OBX-7 range in each), none lost."""

from __future__ import annotations

from typing import Any

from ingest.hl7v2.convert import map_message
from mapping.v2 import forget

ORU = "\r".join([
    "MSH|^~\\&|LAB|GHH|FHIRTWIN|HOSP|20240306101500+0100||ORU^R01^ORU_R01|ORU-0002|P|2.5.1",
    "PID|1||MRN1001^^^GHH^MR||DOE^JOHN^Q||19700415|M",
    "OBR|1|PLC200^EPIC|FIL200^LAB|24323-8^Panel^LN|||20240306080000",
    "OBX|1|FT|8251-1^Comment^LN||line a~line b||||||F",
    "OBX|2|TX|8251-1^Comment^LN||para a~para b~para c||||||F",
    "OBX|3|NM|8867-4^Heart rate^LN||72~75|/min|60-100|N|||F",
    "OBX|4|CWE|600-7^Culture^LN||112283007^E coli^SCT~3092008^S aureus^SCT||||||F",
    "OBX|5|ST|8251-1^Comment^LN||single||||||F",
])

COMMENT = {"coding": [{"code": "8251-1", "display": "Comment", "system": "http://loinc.org"}]}


def _by_set_id(result: Any) -> dict[int, dict[str, Any]]:
    report = result.of_type("DiagnosticReport")[0]
    ids = [ref["reference"].split("/")[1] for ref in report["result"]]
    observations = {o["id"]: o for o in result.of_type("Observation")}
    return {n: observations[i] for n, i in enumerate(ids, 1)}


def test_each_text_repetition_is_a_component_with_the_observation_code() -> None:
    obs = _by_set_id(map_message(ORU))
    assert obs[1]["code"] == COMMENT
    assert obs[1]["component"] == [{"code": COMMENT, "valueString": "line a"},
                                   {"code": COMMENT, "valueString": "line b"}]
    assert [c["valueString"] for c in obs[2]["component"]] == ["para a", "para b", "para c"]
    assert all(c["code"] == COMMENT for c in obs[2]["component"])
    assert "valueString" not in obs[1] and "valueString" not in obs[2]
    assert obs[5]["valueString"] == "single" and "component" not in obs[5]


def test_numeric_and_coded_repetitions_keep_units_range_and_codes() -> None:
    obs = _by_set_id(map_message(ORU))
    rate = obs[3]["component"]
    assert [c["valueQuantity"]["value"] for c in rate] == [72, 75]
    assert all(c["valueQuantity"]["code"] == "/min" and c["referenceRange"] == [{"text": "60-100"}] for c in rate)
    assert all(c["code"]["coding"][0]["code"] == "8867-4" for c in rate)
    culture = obs[4]["component"]
    assert [c["valueCodeableConcept"]["coding"][0]["code"] for c in culture] == ["112283007", "3092008"]


def test_components_are_the_same_cold_and_warm() -> None:
    forget()
    cold = map_message(ORU).resources
    for _ in range(3):
        assert map_message(ORU).resources == cold
