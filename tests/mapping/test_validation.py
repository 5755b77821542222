"""Structural R4 validation: Synthea is valid, and each defect is reported at its FHIRPath."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapping.validation import RESOURCE_TYPES, operation_outcome, validate_resource

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures" / "validation"
SHARED = REPO / ".." / "shared" / "data"
SYNTHEA_NDJSON = SHARED / "synthea" / "ndjson"

SAMPLE = [json.loads(line) for line in (FIXTURES / "synthea_sample.ndjson").read_text().splitlines()]
BLOOD_PRESSURE = next(r for r in SAMPLE if r["resourceType"] == "Observation" and "component" in r)
PATIENT = next(r for r in SAMPLE if r["resourceType"] == "Patient")

Resource = dict[str, Any]


def _expressions(issues: list[dict[str, Any]]) -> dict[str, str]:
    return {issue["expression"][0]: issue["code"] for issue in issues}


def test_sample_resources_are_valid() -> None:
    assert len({r["resourceType"] for r in SAMPLE}) == 14
    for resource in SAMPLE:
        assert validate_resource(resource) == [], resource["id"]


def test_all_synthea_ndjson_resources_are_valid() -> None:
    count = 0
    for path in sorted(SYNTHEA_NDJSON.glob("*.ndjson")):
        with path.open() as fh:
            for line in fh:
                resource = json.loads(line)
                assert validate_resource(resource) == [], (path.name, resource["id"])
                count += 1
    assert count > 25_000


def test_synthea_transaction_bundles_are_valid() -> None:
    paths = sorted((SHARED / "synthea" / "bundles").glob("*.json"))[:5]
    for path in paths:
        bundle = json.loads(path.read_text())
        assert validate_resource(bundle) == [], path.name


def _set(path: list[str | int], value: Any) -> Callable[[Resource], None]:
    def mutate(resource: Resource) -> None:
        node: Any = resource
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return mutate


def _delete(path: list[str | int]) -> Callable[[Resource], None]:
    def mutate(resource: Resource) -> None:
        node: Any = resource
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]

    return mutate


# (name, mutation of the blood-pressure Observation, expected expression, expected code)
OBSERVATION_DEFECTS: list[tuple[str, Callable[[Resource], None], str, str]] = [
    ("unknown element", _set(["statuz"], "final"), "Observation.statuz", "structure"),
    ("unknown nested element", _set(["component", 1, "valueQuantity", "vale"], 1),
     "Observation.component[1].valueQuantity.vale", "structure"),
    ("decimal as string", _set(["component", 1, "valueQuantity", "value"], "114.5"),
     "Observation.component[1].valueQuantity.value", "value"),
    ("boolean for decimal", _set(["component", 0, "valueQuantity", "value"], True),
     "Observation.component[0].valueQuantity.value", "value"),
    ("missing status", _delete(["status"]), "Observation.status", "required"),
    ("missing code", _delete(["code"]), "Observation.code", "required"),
    ("missing component code", _delete(["component", 0, "code"]), "Observation.component[0].code", "required"),
    ("array where single", _set(["code"], [{"text": "x"}]), "Observation.code", "structure"),
    ("single where array", _set(["category"], {"text": "vital-signs"}), "Observation.category", "structure"),
    ("empty array", _set(["category"], []), "Observation.category", "structure"),
    ("primitive array where single", _set(["status"], ["final"]), "Observation.status", "structure"),
    ("bad dateTime", _set(["effectiveDateTime"], "2012-02-13 07:36"), "Observation.effectiveDateTime", "value"),
    ("impossible date", _set(["effectiveDateTime"], "2012-02-30"), "Observation.effectiveDateTime", "value"),
    ("instant without zone", _set(["issued"], "2012-02-13T07:36:34"), "Observation.issued", "value"),
    ("code with spaces", _set(["status"], "final "), "Observation.status", "value"),
    ("empty string", _set(["code", "text"], ""), "Observation.code.text", "value"),
    ("uri with space", _set(["code", "coding", 0, "system"], "http://loinc .org"),
     "Observation.code.coding[0].system", "value"),
    ("bad id", _set(["id"], "has space"), "Observation.id", "value"),
    ("number as string", _set(["code", "coding", 0, "userSelected"], "true"),
     "Observation.code.coding[0].userSelected", "value"),
    ("two value[x]", _set(["component", 0, "valueString"], "x"),
     "Observation.component[0].valueString", "structure"),
    ("value[x] type not allowed", _set(["valueUri"], "http://x"), "Observation.valueUri", "structure"),
    ("bad reference", _set(["subject", "reference"], "patient 123"), "Observation.subject.reference", "value"),
    ("unknown reference type", _set(["subject", "reference"], "Patientt/123"),
     "Observation.subject.reference", "value"),
    ("object where primitive", _set(["status"], {"value": "final"}), "Observation.status", "value"),
    ("null value", _set(["status"], None), "Observation.status", "value"),
    ("empty object", _set(["encounter"], {}), "Observation.encounter", "invariant"),
    ("string where object", _set(["subject"], "Patient/1"), "Observation.subject", "structure"),
    ("primitive extension on complex", _set(["_code"], {"id": "a"}), "Observation._code", "structure"),
    ("bad primitive extension", _set(["_status"], "final"), "Observation.status", "structure"),
    ("unknown element in primitive extension", _set(["_status"], {"foo": 1}), "Observation.status.foo",
     "structure"),
    ("extension without url", _set(["extension"], [{"valueString": "x"}]), "Observation.extension[0].url",
     "required"),
    ("extension value and children", _set(["extension"], [{"url": "http://x", "valueString": "x",
                                                            "extension": [{"url": "y", "valueCode": "z"}]}]),
     "Observation.extension[0]", "invariant"),
    ("meta.lastUpdated not an instant", _set(["meta", "lastUpdated"], "2020-01-01"), "Observation.meta.lastUpdated",
     "value"),
    ("contained not a resource", _set(["contained"], [{"id": "x"}]), "Observation.contained[0]", "invalid"),
    ("contained bad element", _set(["contained"], [{"resourceType": "Medication", "id": "m", "cod": {}}]),
     "Observation.contained[0].cod", "structure"),
    ("narrative without div", _set(["text"], {"status": "generated"}), "Observation.text.div", "required"),
    ("narrative div not xhtml", _set(["text"], {"status": "generated", "div": "plain"}), "Observation.text.div",
     "value"),
    ("integer out of range", _set(["valueInteger"], 2**40), "Observation.valueInteger", "value"),
    ("float for integer", _set(["valueInteger"], 3.0), "Observation.valueInteger", "value"),
    ("base64 broken", _set(["extension"], [{"url": "http://x", "valueBase64Binary": "abc"}]),
     "Observation.extension[0].valueBase64Binary", "value"),
    ("oid malformed", _set(["extension"], [{"url": "http://x", "valueOid": "1.2.3"}]),
     "Observation.extension[0].valueOid", "value"),
    ("uuid malformed", _set(["extension"], [{"url": "http://x", "valueUuid": "urn:uuid:XYZ"}]),
     "Observation.extension[0].valueUuid", "value"),
    ("time malformed", _set(["valueTime"], "25:00:00"), "Observation.valueTime", "value"),
    ("date malformed", _set(["extension"], [{"url": "http://x", "valueDate": "2020-13"}]),
     "Observation.extension[0].valueDate", "value"),
    ("unsignedInt negative", _set(["extension"], [{"url": "http://x", "valueUnsignedInt": -1}]),
     "Observation.extension[0].valueUnsignedInt", "value"),
    ("nested backbone via contentReference", _set(["component", 0, "referenceRange"], [{"lo": {}}]),
     "Observation.component[0].referenceRange[0].lo", "structure"),
    ("positiveInt zero", _set(["valueSampledData"], {"origin": {"value": 1}, "period": 1, "dimensions": 0}),
     "Observation.valueSampledData.dimensions", "value"),
]


@pytest.mark.parametrize(("name", "mutate", "expression", "code"), OBSERVATION_DEFECTS,
                         ids=[case[0] for case in OBSERVATION_DEFECTS])
def test_defect_is_reported_at_its_location(name: str, mutate: Callable[[Resource], None], expression: str,
                                            code: str) -> None:
    resource = copy.deepcopy(BLOOD_PRESSURE)
    mutate(resource)
    found = _expressions(validate_resource(resource))
    assert expression in found, (name, found)
    assert found[expression] == code


def test_local_reference_to_nothing_is_invariant_error() -> None:
    resource = copy.deepcopy(BLOOD_PRESSURE)
    resource["contained"] = [{"resourceType": "Device", "id": "d1"}]
    resource["device"] = {"reference": "#d1"}
    assert validate_resource(resource) == []
    resource["device"] = {"reference": "#d2"}
    assert _expressions(validate_resource(resource)) == {"Observation.device.reference": "invariant"}


def test_contained_resource_must_not_contain() -> None:
    resource = copy.deepcopy(BLOOD_PRESSURE)
    resource["contained"] = [{"resourceType": "Device", "id": "d1",
                              "contained": [{"resourceType": "Device", "id": "d2"}]}]
    assert "Observation.contained[0]" in _expressions(validate_resource(resource))


def test_valid_reference_forms() -> None:
    for reference in ("Patient/123", "Patient/123/_history/2", "http://example.org/fhir/Patient/1",
                      "urn:uuid:0e5bd4f2-3f0e-4b29-9ad0-8f6d8c1b1d11", "urn:oid:1.2.3.4"):
        resource = copy.deepcopy(BLOOD_PRESSURE)
        resource["subject"] = {"reference": reference}
        assert validate_resource(resource) == [], reference


def test_primitive_extensions_and_null_alignment() -> None:
    patient = copy.deepcopy(PATIENT)
    absent = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                             "valueCode": "unknown"}]}
    patient["_birthDate"] = absent
    patient["name"] = [{"family": "Doe", "given": ["Jo", None], "_given": [None, absent]}]
    assert validate_resource(patient) == []
    patient["name"] = [{"family": "Doe", "given": ["Jo", None], "_given": [None, None]}]
    assert "Patient.name[0].given[1]" in _expressions(validate_resource(patient))
    patient["name"] = [{"family": "Doe", "given": ["Jo"], "_given": [None, absent]}]
    assert "Patient.name[0].given" in _expressions(validate_resource(patient))
    patient["name"] = [{"family": "Doe", "given": ["Jo", None]}]
    assert "Patient.name[0].given[1]" in _expressions(validate_resource(patient))


def test_required_primitive_satisfied_by_extension_only() -> None:
    resource = copy.deepcopy(BLOOD_PRESSURE)
    del resource["status"]
    resource["_status"] = {"extension": [{"url": "http://example.org/why", "valueString": "lost"}]}
    assert validate_resource(resource) == []


def test_nested_bundle_resources_are_validated() -> None:
    broken = copy.deepcopy(BLOOD_PRESSURE)
    broken["component"][1]["valueQuantity"]["value"] = "high"
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": PATIENT}, {"fullUrl": "urn:uuid:0e5bd4f2-3f0e-4b29-9ad0-8f6d8c1b1d11",
                                                "resource": broken}]}
    found = _expressions(validate_resource(bundle))
    assert found == {"Bundle.entry[1].resource.component[1].valueQuantity.value": "value"}
    bundle["entry"].append({"resource": {"resourceType": "Nonsense"}})
    assert _expressions(validate_resource(bundle))["Bundle.entry[2].resource"] == "invalid"


@pytest.mark.parametrize("document", [{"resourceType": "DomainResource"}, {"resourceType": 7}, {}, [], "x"])
def test_not_a_resource(document: Any) -> None:
    issues = validate_resource(document)
    assert len(issues) == 1 and issues[0]["code"] in ("invalid", "structure")


@pytest.mark.parametrize("resource_type", ["Patiant", "DomainResource", 7, None])
def test_an_unknown_resource_type_is_located_at_resource_type(resource_type: Any) -> None:
    """Not at the unknown type's name, which is no path at all."""
    document = {"id": "x"} if resource_type is None else {"resourceType": resource_type, "id": "x"}
    (issue,) = validate_resource(document)
    assert (issue["code"], issue["expression"]) == ("invalid", ["resourceType"])


def test_resource_types_are_the_concrete_r4_set() -> None:
    assert len(RESOURCE_TYPES) == 147
    assert {"Patient", "Observation", "Bundle", "Parameters"} <= RESOURCE_TYPES
    assert "DomainResource" not in RESOURCE_TYPES and "Resource" not in RESOURCE_TYPES


def test_operation_outcome_shape() -> None:
    resource = copy.deepcopy(BLOOD_PRESSURE)
    del resource["status"]
    outcome = operation_outcome(validate_resource(resource))
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert validate_resource(outcome) == []
    assert operation_outcome([])["issue"][0]["severity"] == "information"
    assert validate_resource(operation_outcome([])) == []


def test_shipped_tables_are_what_the_build_script_produces() -> None:
    import gzip

    from mapping.validation.build import OUTPUT, compile_definitions

    shipped = json.loads(gzip.decompress(OUTPUT.read_bytes()))
    assert compile_definitions(SHARED / "fhir-r4") == shipped
    assert shipped["fhirVersion"] == "4.0.1"


@pytest.mark.parametrize("contained", [-1, True, "x", {"id": "a"}, [{"id": []}], [{"id": {"a": 1}}]])
def test_a_malformed_contained_is_reported_not_raised(contained: Any) -> None:
    resource = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "contained": contained,
                "subject": {"reference": "#a"}}
    issues = validate_resource(resource)
    assert any(i["expression"][0].startswith("Observation.contained") for i in issues)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
_KEYS = st.sampled_from(["contained", "extension", "_status", "id", "meta", "resourceType", "text", "code",
                         "coding", "reference", "value", "valueQuantity", "component", "zz"])


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*path, index))
    return out


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SAMPLE), st.lists(st.tuples(st.floats(0, 1), _KEYS, _JSON), min_size=1, max_size=4))
def test_any_damage_to_a_resource_is_reported_never_raised(resource: Resource, damage: list) -> None:
    """Whatever JSON a sender puts anywhere in a resource, validation answers with issues."""
    resource = copy.deepcopy(resource)
    for where, key, value in damage:
        containers = [p for p in _paths(resource) if isinstance(_at(resource, p), dict)]
        _at(resource, containers[int(where * (len(containers) - 1))])[key] = value
    issues = validate_resource(resource)
    assert all(set(issue) >= {"severity", "code", "diagnostics", "expression"} for issue in issues)


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node
