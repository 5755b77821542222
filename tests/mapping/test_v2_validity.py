"""Every resource the v2 mapper emits for the shared HL7 v2 corpus is valid R4.

The corpus (the NIST/IG/converter samples) is read the way the file ingest reads it:
every ER7 file, split into messages by ``read_batch``. Malformed entries are the
parser's business and are skipped here; everything that parses is mapped and every
resource is run through the project's structural R4 validator.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from ingest.hl7v2 import map_message, read_batch
from mapping.validation import validate_resource

HL7V2 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hl7v2"
CORPUS = ("samples", "fhir-converter-messages", "v2-to-fhir-test-messages")
ER7_SUFFIXES = (".hl7", ".hl7v2")


def corpus_messages() -> list[tuple[str, Any]]:
    out = []
    for folder in CORPUS:
        for path in sorted((HL7V2 / folder).iterdir()):
            if path.suffix.lower() in ER7_SUFFIXES:
                for entry in read_batch(path.read_bytes()).entries:
                    if entry.message is not None:
                        out.append((f"{folder}/{path.name}#{entry.index}", entry.message))
    return out


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, Any]]:
    return corpus_messages()


def test_corpus_is_there(corpus: list[tuple[str, Any]]) -> None:
    assert len(corpus) >= 170


def test_every_mapped_resource_is_valid_r4(corpus: list[tuple[str, Any]]) -> None:
    problems: dict[str, list[str]] = defaultdict(list)
    resources = 0
    for where, msg in corpus:
        result = map_message(msg)
        for res in result.resources:
            resources += 1
            for issue in validate_resource(res):
                if issue["severity"] in ("error", "fatal"):
                    expr = re.sub(r"\[\d+\]", "[]", (issue.get("expression") or ["?"])[0])
                    problems[f"{expr}: {issue['diagnostics']}"].append(where)
    report = "\n".join(f"{len(w):4d}  {kind}  e.g. {w[0]}" for kind, w in sorted(problems.items(), key=lambda kv: -len(kv[1])))
    assert not problems, f"invalid R4 from {sum(map(len, problems.values()))} issues:\n{report}"
    assert resources > 1000


def _map(*segments: str) -> Any:
    return map_message("\r".join(("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20260301120000+0100||ORU^R01^ORU_R01|M1|P|2.5.1",
                                   *segments)))


def test_padded_and_blank_codes_are_trimmed_or_dropped() -> None:
    result = _map(
        "PID|1||P1^^^HOSP^MR||Doe^Jane||19700101| F |||||||| ",
        "OBR|1||F1|2345-7^Glucose^LN",
        "OBX|1|CWE|5778-6^Color^LN||371244009 ^Yellow^SCT ||||||F",
        "OBX|2|CWE|5778-6^Color^LN|2| ^^SCT||||||F",
    )
    patient = result.of_type("Patient")[0]
    assert patient["gender"] == "female"
    assert "extension" not in patient  # PID-17 religion was a lone space
    codings = [c for o in result.of_type("Observation") for c in o.get("valueCodeableConcept", {}).get("coding", [])]
    assert [c["code"] for c in codings if "code" in c] == ["371244009"]  # the blank code is left out
    for res in result.resources:
        assert [i for i in validate_resource(res) if i["severity"] == "error"] == []


def test_extensions_from_two_segments_keep_their_own_url_and_one_value() -> None:
    result = map_message((HL7V2 / "fhir-converter-messages" / "ADT-A01-01.hl7").read_bytes())
    by_url = {e["url"].rsplit("/", 1)[1]: e for e in result.of_type("Patient")[0]["extension"]}
    assert by_url["patient-mothersMaidenName"] == {
        "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "SMITH Angela L"
    }
    assert by_url["patient-importance"]["valueCodeableConcept"]["coding"][0]["code"] == "VIP"  # from PV1-16
    for ext in result.of_type("Patient")[0]["extension"]:
        assert len([k for k in ext if k.startswith("value")]) <= 1


def test_one_collected_x_when_obr_and_spm_both_give_collection_times() -> None:
    result = map_message((HL7V2 / "fhir-converter-messages" / "MDHHS-OML-O21-2.hl7").read_bytes())
    for specimen in result.of_type("Specimen"):
        assert len([k for k in specimen.get("collection", {}) if k.startswith("collected")]) <= 1


def test_message_that_yields_nothing_has_no_provenance() -> None:
    result = map_message("MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|1|P|2.5\rEVN|A01")
    assert result.mapped and result.resources == []


def test_resource_missing_an_element_r4_requires_is_dropped_with_a_note() -> None:
    result = map_message("MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|1|P|2.3\rIN1|1|PLAN1|INS1^^^AUTH|Acme")
    assert result.of_type("Coverage") == []  # no PID: no beneficiary
    assert any("Coverage" in note and "beneficiary" in note for note in result.notes)
