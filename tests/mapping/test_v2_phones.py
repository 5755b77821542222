"""XTN → ContactPoint.value as the IG's XTN.7 rows compose it ("+" country, area and local
number, " X" extension) when the number is sent in components, and XTN.1 when the number is
sent whole there."""

from __future__ import annotations

import pytest

from ingest.hl7v2.convert import map_message

ADT = "\r".join([
    "MSH|^~\\&|EPIC|GHH|FHIRTWIN|HOSP|20240301090000-0500||ADT^A01^ADT_A01|A01-1|P|2.5.1",
    "EVN|A01|20240301085900-0500",
    "PID|1||MRN1^^^GHH^MR||DOE^JOHN||19700415|M|||||{xtn}",
    "PV1|1|I",
])


@pytest.mark.parametrize(("xtn", "value"), [
    ("^PRN^PH^^1^217^5551234", "+1 217 5551234"),
    ("^PRN^PH^^^217^5551234", "217 5551234"),
    ("^WPN^PH^^1^217^5551234^12", "+1 217 5551234 X12"),
    ("^PRN^PH^^^217^5551234^12", "217 5551234 X12"),
    ("(217)555-9999^WPN^PH^^1^217^5559999", "(217)555-9999"),
    ("(217)555-9999^PRN^PH", "(217)555-9999"),
    ("^NET^Internet^john@example.org", "john@example.org"),
])
def test_contact_point_value(xtn: str, value: str) -> None:
    [patient] = map_message(ADT.format(xtn=xtn)).of_type("Patient")
    [telecom] = patient["telecom"]
    assert telecom["value"] == value


def test_components_are_kept_as_extensions_beside_the_value() -> None:
    [patient] = map_message(ADT.format(xtn="^PRN^PH^^1^217^5551234~^WPN^PH^^^312^5550000")).of_type("Patient")
    home, work = patient["telecom"]
    assert (home["use"], home["system"], home["value"]) == ("home", "phone", "+1 217 5551234")
    assert {e["url"].rsplit("-", 1)[1]: e["valueString"] for e in home["extension"]} == {
        "country": "1", "area": "217", "local": "5551234"}
    assert (work["use"], work["value"]) == ("work", "312 5550000")
