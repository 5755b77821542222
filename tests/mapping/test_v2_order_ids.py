"""A report, an order and their observations keep their ids whether or not the sender
includes ORC (ORC now creates the DiagnosticReport and ServiceRequest of an ORU^R01), and a
ServiceRequest keeps the order numbers that ORC and OBR both send."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.hl7v2.convert import map_message

MSH = "MSH|^~\\&|LAB|GHH|FHIRTWIN|HOSP|20240306101500+0100||{type}|MSG-{n}|P|{version}"
PID = "PID|1||MRN1001^^^GHH^MR||DOE^JOHN^Q||19700415|M"
ORC = "ORC|RE|PLC300^EPIC|FIL300^LAB|GRP7^EPIC|CM"
OBR = ("OBR|1|PLC300^EPIC|FIL300^LAB|24323-8^Comprehensive metabolic panel^LN|||20240306080000|||||||||||||||"
       "20240306100000|||F")
OBX = "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F"


def _oru(*, orc: bool, version: str = "2.5.1") -> str:
    segments = [MSH.format(type="ORU^R01^ORU_R01", n=1, version=version), PID]
    return "\r".join([*segments, *([ORC] if orc else []), OBR, OBX])


def _order_numbers(request: dict[str, Any]) -> list[tuple[str, str]]:
    """(type code, value) of the placer and filler identifiers."""
    pairs = [(i["type"]["coding"][0]["code"], i["value"]) for i in request["identifier"]]
    return [p for p in pairs if p[0] in ("PLAC", "FILL")]


def _ids(result: Any, *types: str) -> list[tuple[str, str]]:
    return [(r["resourceType"], r["id"]) for r in result.resources if r["resourceType"] in types]


@pytest.mark.parametrize("version", ["2.3", "2.5.1", "2.8"])
def test_report_observation_and_specimen_ids_do_not_depend_on_orc(version: str) -> None:
    """ORC-4 (placer group number) is no part of the report's id: OBR-4 is, whoever created it."""
    with_orc = map_message(_oru(orc=True, version=version))
    without = map_message(_oru(orc=False, version=version))
    types = ("DiagnosticReport", "Observation", "Specimen", "Patient")
    assert _ids(with_orc, *types) == _ids(without, *types)
    [report] = with_orc.of_type("DiagnosticReport")
    [observation] = with_orc.of_type("Observation")
    assert report["result"] == [{"reference": f"Observation/{observation['id']}"}]


def test_ids_are_the_same_across_versions_with_and_without_orc() -> None:
    reference = _ids(map_message(_oru(orc=False, version="2.8")), "DiagnosticReport", "Observation")
    for version in ("2.3", "2.4", "2.5.1", "2.6", "2.8"):
        for orc in (True, False):
            assert _ids(map_message(_oru(orc=orc, version=version)), "DiagnosticReport", "Observation") == reference


def test_order_and_result_name_one_service_request() -> None:
    """The ORM^O01 that placed the order and the ORU^R01 that answers it give one ServiceRequest
    (ORC creates it in the ORM, ORC or OBR in the ORU)."""
    orm = "\r".join([MSH.format(type="ORM^O01^ORM_O01", n=2, version="2.5.1"), PID,
                     "ORC|NW|PLC300^EPIC|FIL300^LAB|GRP7^EPIC|IP", OBR])
    [ordered] = map_message(orm).of_type("ServiceRequest")
    result = map_message(_oru(orc=True))
    [answered] = result.of_type("ServiceRequest")
    assert ordered["id"] == answered["id"]
    [report] = result.of_type("DiagnosticReport")
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{ordered['id']}"}]


def test_service_request_keeps_order_numbers_sent_in_orc_and_obr() -> None:
    """The IG writes ORC-2/3 only when OBR-2/3 are empty and the other way round: with both sent,
    the identifiers are kept once each."""
    [request] = map_message(_oru(orc=True)).of_type("ServiceRequest")
    assert _order_numbers(request) == [("PLAC", "PLC300"), ("FILL", "FIL300")]
    assert request["requisition"]["value"] == "GRP7"


def test_differing_order_numbers_are_both_kept() -> None:
    oru = _oru(orc=True).replace("ORC|RE|PLC300^EPIC", "ORC|RE|PLC999^EPIC")
    [request] = map_message(oru).of_type("ServiceRequest")
    assert sorted(_order_numbers(request)) == [("FILL", "FIL300"), ("PLAC", "PLC300"), ("PLAC", "PLC999")]


def test_each_order_group_keeps_its_own_numbers() -> None:
    """The IG's condition reads the message's first ORC: the second order group of a message lost
    its numbers too."""
    second_orc = ORC.replace("300", "301")
    second_obr = OBR.replace("300", "301").replace("OBR|1|", "OBR|2|")
    oru = "\r".join([_oru(orc=True), second_orc, second_obr, OBX])
    requests = map_message(oru).of_type("ServiceRequest")
    assert [_order_numbers(r) for r in requests] == [[("PLAC", "PLC300"), ("FILL", "FIL300")],
                                                    [("PLAC", "PLC301"), ("FILL", "FIL301")]]


VXU_RXA = "RXA|0|1|20150624083000||08^Hep B^CVX|0.5|mL^mL^UCUM||00^New Record^NIP001"


@pytest.mark.parametrize("version", ["2.3", "2.5.1"])
def test_immunization_id_does_not_depend_on_orc(version: str) -> None:
    head = [MSH.format(type="VXU^V04^VXU_V04", n=3, version=version), PID]
    with_orc = map_message("\r".join([*head, "ORC|RE|4422^EHR|13696^EHR", VXU_RXA]))
    without = map_message("\r".join([*head, VXU_RXA]))
    [a] = with_orc.of_type("Immunization")
    [b] = without.of_type("Immunization")
    assert a["id"] == b["id"]
    assert a["vaccineCode"]["coding"][0]["code"] == "08"
