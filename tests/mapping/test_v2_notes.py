"""NTE segments become ``note`` of the resource the IG's message table names
(``OBSERVATION.NTE`` → ``Observation[2].note``, ``ORDER_DETAIL.NTE`` → ``ServiceRequest[1].note``):
each NTE its own note, added to the resource of its group, never a resource of its own."""

from __future__ import annotations

from ingest.hl7v2.convert import map_message

ORU = "\r".join([
    "MSH|^~\\&|LAB|GHH|FHIRTWIN|HOSP|20240312101500+0100||ORU^R01^ORU_R01|ESC-0002|P|2.5.1",
    "PID|1||MRN1001^^^GHH^MR||DOE^JOHN^Q||19700415|M",
    "OBR|1|PLC600^EPIC|FIL600^LAB|8251-1^Comment^LN|||20240312080000|||||||||||||||20240312100000|||F",
    "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F",
    "NTE|1|L|Note with \\T\\ ampersand",
    "NTE|2|L|Second note||MLEE^ATTEND^AARON|20240312093000",
    "OBX|2|NM|2160-0^Creatinine^LN||1.1|mg/dL|0.6-1.3|N|||F",
])

ORM = "\r".join([
    "MSH|^~\\&|CPOE|GHH|LAB|GHH|20240312101500+0100||ORM^O01^ORM_O01|ORM-0001|P|2.5.1",
    "PID|1||MRN1001^^^GHH^MR||DOE^JOHN^Q||19700415|M",
    "ORC|NW|PLC700^EPIC",
    "OBR|1|PLC700^EPIC||24323-8^Comprehensive metabolic panel^LN",
    "NTE|1||Fasting since midnight",
])


def _observation(result: object, loinc: str) -> dict:
    [found] = [o for o in result.of_type("Observation") if o["code"]["coding"][0]["code"] == loinc]  # type: ignore[attr-defined]
    return found


def test_nte_after_obx_becomes_notes_of_that_observation() -> None:
    result = map_message(ORU)
    glucose = _observation(result, "2345-7")
    assert [n["text"] for n in glucose["note"]] == ["Note with & ampersand", "Second note"]
    assert glucose["note"][1]["time"] == "2024-03-12T09:30:00+01:00"
    [author] = result.of_type("Practitioner")
    assert glucose["note"][1]["authorReference"] == {"reference": f"Practitioner/{author['id']}"}
    assert "note" not in _observation(result, "2160-0")
    assert len(result.of_type("Observation")) == 2


def test_nte_of_an_order_detail_becomes_a_service_request_note() -> None:
    result = map_message(ORM)
    [request] = result.of_type("ServiceRequest")
    assert request["note"] == [{"text": "Fasting since midnight"}]


def test_nte_outside_any_resource_of_its_target_makes_none() -> None:
    """A note row adds to a resource: an NTE the grouping leaves at the top of the message (after
    an ODS, which has no ORDER_DETAIL here) is not a ServiceRequest of its own."""
    stray = "\r".join([*ORM.split("\r")[:3], "ODS|D||1234^Low salt diet", "NTE|1||Fasting since midnight"])
    result = map_message(stray)
    [request] = result.of_type("ServiceRequest")
    assert "note" not in request
