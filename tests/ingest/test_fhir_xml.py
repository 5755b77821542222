"""FHIR XML <-> JSON: typed values, arrays, primitive extensions, round trips, hardened parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from ingest.fhir_xml import FhirXmlError, xml_to_resource
from mapping.fhir_xml_write import FhirXmlWriteError, resource_to_xml
from mapping.validation import validate_resource

REPO = Path(__file__).resolve().parents[2]
XML_FIXTURES = REPO / "fixtures" / "xml"
SAMPLE = [json.loads(line) for line in
          (REPO / "fixtures" / "validation" / "synthea_sample.ndjson").read_text().splitlines()]
SHARED_BUNDLES = REPO / ".." / "shared" / "data" / "synthea" / "bundles"
F = "{http://hl7.org/fhir}"


def test_hand_written_xml_converts_to_expected_json() -> None:
    converted = xml_to_resource((XML_FIXTURES / "patient-extensions.xml").read_bytes())
    expected = json.loads((XML_FIXTURES / "patient-extensions.json").read_text())
    assert converted == expected
    assert converted["multipleBirthInteger"] == 2 and converted["active"] is False
    assert validate_resource(converted) == []


def test_written_xml_reads_back_and_has_fhir_shape() -> None:
    expected = json.loads((XML_FIXTURES / "patient-extensions.json").read_text())
    xml = resource_to_xml(expected)
    assert xml.startswith(b"<?xml")
    root = etree.fromstring(xml)
    assert root.tag == F + "Patient"
    given = root.findall(f"{F}name/{F}given")
    assert [g.get("value") for g in given] == ["Jo", None, "Ann"]
    assert given[1].find(f"{F}extension").get("url").endswith("data-absent-reason")
    assert root.find(f"{F}birthDate").get("id") == "bd"
    assert root.find(f"{F}identifier").get("id") == "mrn"
    assert root.find(f"{F}contained/{F}Organization/{F}active").get("value") == "true"
    assert root.find(f"{F}text/{{http://www.w3.org/1999/xhtml}}div") is not None
    assert xml_to_resource(xml) == expected


def test_xml_elements_follow_definition_order_not_json_order() -> None:
    observation = {"valueQuantity": {"code": "mg/dL", "value": 99}, "code": {"text": "glucose"},
                   "status": "final", "id": "o1", "resourceType": "Observation"}
    root = etree.fromstring(resource_to_xml(observation))
    assert [child.tag[len(F):] for child in root] == ["id", "status", "code", "valueQuantity"]
    assert [child.tag[len(F):] for child in root.find(F + "valueQuantity")] == ["value", "code"]


@pytest.mark.parametrize("resource", SAMPLE, ids=[f"{r['resourceType']}-{r['id'][:8]}" for r in SAMPLE])
def test_synthea_round_trip_json_xml_json(resource: dict) -> None:
    assert xml_to_resource(resource_to_xml(resource)) == resource


def test_bundle_round_trip() -> None:
    bundle = {"resourceType": "Bundle", "id": "b1", "type": "collection",
              "entry": [{"fullUrl": f"urn:uuid:{i:08d}-0000-4000-8000-000000000000", "resource": r}
                        for i, r in enumerate(SAMPLE)]}
    xml = resource_to_xml(bundle, pretty=True)
    assert xml_to_resource(xml) == bundle


def test_synthea_transaction_bundle_round_trip() -> None:
    path = min(SHARED_BUNDLES.glob("*.json"), key=lambda p: p.stat().st_size)
    bundle = json.loads(path.read_text())
    assert xml_to_resource(resource_to_xml(bundle)) == bundle


def test_malformed_typed_values_are_kept_for_the_validator() -> None:
    xml = (b'<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code>'
           b'<valueInteger value="seven"/></Observation>')
    resource = xml_to_resource(xml)
    assert resource["valueInteger"] == "seven"
    issues = validate_resource(resource)
    assert [i["expression"] for i in issues] == [["Observation.valueInteger"]]


@pytest.mark.parametrize("fixture", ["xxe.xml", "billion-laughs.xml"])
def test_dtd_documents_are_refused(fixture: str) -> None:
    with pytest.raises(FhirXmlError, match="DOCTYPE"):
        xml_to_resource((XML_FIXTURES / fixture).read_bytes())


@pytest.mark.parametrize("fixture", ["xxe.xml", "billion-laughs.xml"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_dtd_in_wide_encodings_is_refused_before_parsing(fixture: str, encoding: str) -> None:
    document = (XML_FIXTURES / fixture).read_text().replace('<?xml version="1.0"?>', "")
    with pytest.raises(FhirXmlError, match="DOCTYPE"):
        xml_to_resource(document.encode(encoding))


@pytest.mark.parametrize(("document", "message"), [
    (b"<Patient><id value='x'/></Patient>", "namespace"),
    (b"<Patient xmlns='http://hl7.org/fhir'><nonsense value='x'/></Patient>", "unknown element"),
    (b"<Patient xmlns='http://hl7.org/fhir'><gender value='male'/><gender value='female'/></Patient>",
     "does not repeat"),
    (b"<Nonsense xmlns='http://hl7.org/fhir'/>", "unknown resource type"),
    (b"<Patient xmlns='http://hl7.org/fhir'><id value='x'/>", "well-formed"),
    (b"<Bundle xmlns='http://hl7.org/fhir'><type value='collection'/><entry><resource/></entry></Bundle>",
     "exactly one resource"),
])
def test_invalid_documents_give_clear_errors(document: bytes, message: str) -> None:
    with pytest.raises(FhirXmlError, match=message):
        xml_to_resource(document)


def test_string_input_with_declaration_is_accepted() -> None:
    text = '<?xml version="1.0" encoding="UTF-8"?><Patient xmlns="http://hl7.org/fhir"><id value="é"/></Patient>'
    assert xml_to_resource(text) == {"resourceType": "Patient", "id": "é"}


@pytest.mark.parametrize(("resource", "message"), [
    ({"resourceType": "Patient", "nonsense": 1}, "unknown element"),
    ({"resourceType": "Nope"}, "unknown resourceType"),
    ({"resourceType": "Patient", "text": {"status": "generated", "div": "<p>not a div</p>"}}, "XHTML <div>"),
    ({"resourceType": "Patient", "text": {"status": "generated", "div": "<div"}}, "well-formed"),
    ({"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [None]}]}, "differ in length"),
])
def test_writer_rejects_what_xml_cannot_express(resource: dict, message: str) -> None:
    with pytest.raises(FhirXmlWriteError, match=message):
        resource_to_xml(resource)


def test_a_decimal_beyond_64_bits_reads_as_json_would_read_it() -> None:
    """As a float, like orjson reads such a JSON number: the store can then write it."""
    from store.store import Store

    xml = (b'<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code>'
           b'<valueQuantity><value value="1180591620717411303424"/></valueQuantity></Observation>')
    obs = xml_to_resource(xml)
    assert obs["valueQuantity"]["value"] == json.loads('{"v": 1180591620717411303424.0}')["v"]
    assert isinstance(obs["valueQuantity"]["value"], float) and validate_resource(obs) == []
    assert xml_to_resource(xml.replace(b"1180591620717411303424", b"41"))["valueQuantity"]["value"] == 41
    (written,) = Store(":memory:").write([obs])
    assert written.outcome == "created"
