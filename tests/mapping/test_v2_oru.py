"""ORU^R01 → DiagnosticReport, Observation (every OBX value type), Specimen, Provenance."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from ingest.hl7v2.convert import map_message

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7v2"


@pytest.fixture(scope="module")
def oru() -> Any:
    return map_message((FIXTURES / "oru_r01_value_types_2patients.hl7").read_bytes())


def obs(result: Any, loinc: str) -> list[dict[str, Any]]:
    return [o for o in result.of_type("Observation") if o["code"]["coding"][0]["code"] == loinc]


def one(result: Any, loinc: str) -> dict[str, Any]:
    [o] = obs(result, loinc)
    return o


def test_every_resource_is_valid_r4(oru: Any) -> None:
    for res in oru.resources:
        FHIRElementFactory.instantiate(res["resourceType"], res)  # raises on invalid R4


def test_numeric_values_units_to_ucum_and_codes(oru: Any) -> None:
    glucose = one(oru, "2345-7")
    assert glucose["code"]["coding"][0]["system"] == "http://loinc.org"
    assert glucose["valueQuantity"] == {
        "value": 98, "unit": "mg/dl", "system": "http://unitsofmeasure.org", "code": "mg/dL"
    }
    assert glucose["status"] == "final"
    assert glucose["effectiveDateTime"] == "2026-03-01T07:15:00+01:00"
    assert glucose["referenceRange"] == [{"text": "70-99"}]
    assert glucose["interpretation"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
        "code": "N",
        "display": "Normal",
    }
    wbc = one(oru, "6690-2")
    assert wbc["valueQuantity"]["code"] == "10*3/uL"
    assert wbc["status"] == "corrected"
    assert one(oru, "718-7")["valueQuantity"]["code"] == "g/dL"


@pytest.mark.parametrize(("nm", "value"), [("98", 98), ("-7", -7), ("1180591620717411303424", 1.1805916207174113e21),
                                         ("-1180591620717411303424", -1.1805916207174113e21)])
def test_a_numeric_result_beyond_64_bits_maps_as_json_would_read_it(nm: str, value: float) -> None:
    """A float, as orjson reads such a JSON number (an int beyond 64 bits cannot be stored), and the
    message's resources are prepared for the store like any other's."""
    from ingest.hl7v2.processor import Work, map_batch

    text = (FIXTURES / "oru_r01_value_types_2patients.hl7").read_text().replace("\n", "\r")
    text = text.replace("|NM|2345-7^Glucose [Mass/volume] in Serum or Plasma^LN||98|",
                        f"|NM|2345-7^Glucose [Mass/volume] in Serum or Plasma^LN||{nm}|")
    result = map_message(text.encode())
    glucose = one(result, "2345-7")["valueQuantity"]["value"]
    assert glucose == value and type(glucose) is type(value)
    assert [o.status for o in map_batch([Work(1, text)]).outcomes] == ["processed"]


def test_structured_numeric_comparator_ratio_range(oru: Any) -> None:
    assert one(oru, "5196-1")["valueQuantity"]["comparator"] == ">"
    assert one(oru, "5196-1")["valueQuantity"]["value"] == 5
    assert one(oru, "5130-0")["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 128}}
    rng = one(oru, "1234-5")["valueRange"]
    assert (rng["low"]["value"], rng["high"]["value"], rng["low"]["code"]) == (2, 5, "mmol/L")


def test_text_values_are_unescaped(oru: Any) -> None:
    texts = [o["valueString"] for o in obs(oru, "8251-1")]
    assert texts == ["Short text with a & and ^", "Long text line"]
    ft = [o for o in obs(oru, "11526-1") if "valueString" in o]
    assert ft[0]["valueString"] == "First line\nSecond line"


def test_coded_date_and_array_values(oru: Any) -> None:
    cwe = one(oru, "5778-6")["valueCodeableConcept"]["coding"][0]
    assert cwe == {"code": "371244009", "display": "Yellow", "system": "http://snomed.info/sct"}
    assert one(oru, "883-9")["valueCodeableConcept"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert one(oru, "21112-8")["valueDateTime"] == "1970-02-14"
    assert one(oru, "3141-9")["valueDateTime"] == "2026-03-01T07:15:00-05:00"
    assert one(oru, "8601-7")["valueDateTime"] == "2026-03-01T07:15:00+01:00"  # TS, offset from MSH-7
    sampled = one(oru, "11524-6")
    assert sampled["valueSampledData"]["data"] == "1 2 3 4"
    assert "valueQuantity" not in sampled


def test_encapsulated_data_becomes_an_attachment(oru: Any) -> None:
    [ed] = [o for o in obs(oru, "11526-1") if "extension" in o]
    att = ed["extension"][0]["valueAttachment"]
    assert base64.b64decode(att["data"]) == b"Hello PDF"


def test_observations_are_grouped_under_their_own_report(oru: Any) -> None:
    reports = {r["code"]["coding"][0]["code"]: r for r in oru.of_type("DiagnosticReport")}
    assert set(reports) == {"24323-8", "58410-2", "2339-0"}
    ids = {o["id"]: o["code"]["coding"][0]["code"] for o in oru.of_type("Observation")}
    cmp_results = [ids[r["reference"].split("/")[1]] for r in reports["24323-8"]["result"]]
    cbc_results = [ids[r["reference"].split("/")[1]] for r in reports["58410-2"]["result"]]
    assert cmp_results[:2] == ["2345-7", "2160-0"] and len(cmp_results) == 15
    assert cbc_results == ["718-7", "6690-2"]
    assert [ids[r["reference"].split("/")[1]] for r in reports["2339-0"]["result"]] == ["2339-0"]


def test_each_patient_result_has_its_own_subject(oru: Any) -> None:
    patients = {p["identifier"][0]["value"]: p["id"] for p in oru.of_type("Patient")}
    assert set(patients) == {"MRN001", "MRN002"}
    assert one(oru, "2345-7")["subject"] == {"reference": f"Patient/{patients['MRN001']}"}
    assert one(oru, "2339-0")["subject"] == {"reference": f"Patient/{patients['MRN002']}"}
    second_report = [r for r in oru.of_type("DiagnosticReport") if r["code"]["coding"][0]["code"] == "2339-0"][0]
    assert second_report["subject"]["reference"] == f"Patient/{patients['MRN002']}"
    assert "encounter" not in one(oru, "2339-0")  # the visit belongs to the first patient only
    assert oru.patient_id == patients["MRN001"]


def test_specimen_from_spm_and_specimen_observation(oru: Any) -> None:
    [spm] = [s for s in oru.of_type("Specimen") if "type" in s]
    assert spm["type"]["coding"][0] == {
        "code": "119297000", "display": "Blood specimen", "system": "http://snomed.info/sct"
    }
    assert spm["collection"]["collectedDateTime"] == "2026-03-01T07:00:00+01:00"
    cbc = [r for r in oru.of_type("DiagnosticReport") if r["code"]["coding"][0]["code"] == "58410-2"][0]
    assert {"reference": f"Specimen/{spm['id']}"} in cbc["specimen"]


def test_provenance_names_the_source_message(oru: Any) -> None:
    [prov] = oru.of_type("Provenance")
    assert oru.resources[-1] is prov
    assert prov["recorded"] == "2026-03-01T08:30:00+01:00"
    assert prov["entity"][0]["what"]["identifier"]["value"] == "CTRL-ALL-1"
    assert prov["agent"][0]["who"]["display"] == "LAB GENHOSP"
    targets = {t["reference"] for t in prov["target"]}
    assert {f"{r['resourceType']}/{r['id']}" for r in oru.resources if r is not prov} == targets


def test_ids_are_deterministic_and_distinct() -> None:
    raw = (FIXTURES / "oru_r01_value_types_2patients.hl7").read_bytes()
    first, again = map_message(raw), map_message(raw)
    assert [r["id"] for r in first.resources] == [r["id"] for r in again.resources]
    obs_ids = [o["id"] for o in first.of_type("Observation")]
    assert len(set(obs_ids)) == len(obs_ids)


def test_lri_cbc_20_obx() -> None:
    result = map_message((FIXTURES / "derived_ORU_R01_LRI_CBC_first20obx.hl7").read_bytes())
    assert len(result.of_type("Observation")) == 20
    [report] = result.of_type("DiagnosticReport")
    assert len(report["result"]) == 20
    rbc = result.of_type("Observation")[0]
    assert rbc["valueQuantity"] == {
        "value": 4.41, "code": "10*6/uL", "unit": "million per microliter", "system": "http://unitsofmeasure.org"
    }
    assert rbc["effectiveDateTime"] == "2011-01-03T14:34:28-08:00"


def test_specimen_shipment_id_is_typed_ship() -> None:
    """SPM-32: the IG's sheet writes the type code in the column beside the path (assign: "SHIP")
    and the system in the path itself (system="…v2-0203")."""
    msg = ("MSH|^~\\&|LAB|H|EHR|H|20260301120000||ORU^R01^ORU_R01|c1|P|2.5.1\rPID|1||555^^^H^MR||Doe^Jane\r"
           "OBR|1|P1|F1|2345-7^Glucose^LN|||20260301110000\rOBX|1|NM|2345-7^Glucose^LN|1|105|mg/dL|||||F\r"
           "SPM|1|SP1||BLD" + "|" * 28 + "SHIP123^LAB\r")
    identifiers = [i for s in map_message(msg).of_type("Specimen") for i in s.get("identifier", [])]
    [shipment] = [i for i in identifiers if i["value"] == "SHIP123"]
    assert shipment["type"] == {"coding": [{"code": "SHIP", "system": "http://terminology.hl7.org/CodeSystem/v2-0203"}]}
