"""OBX without OBX-2: a plain number is read as NM, plain text as ST, with a warning in the ACK;
a value with components is not guessed at."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.hl7v2.convert import map_message
from ingest.hl7v2.er7 import parse_message
from ingest.hl7v2.inferred_types import with_inferred_types
from ingest.hl7v2.processor import Work, map_batch, write_mapped
from ingest.pipeline import Ingestor
from store.store import Store


def _result(obx2: str, obx5: str, units: str = "") -> str:
    return ("MSH|^~\\&|LAB|H|EHR|H|20260301120000||ORU^R01^ORU_R01|c1|P|2.5.1\r"
            "PID|1||555^^^H^MR||Doe^Jane\r"
            "OBR|1|P1|F1|2345-7^Glucose^LN|||20260301110000\r"
            f"OBX|1|{obx2}|2345-7^Glucose^LN|1|{obx5}|{units}|||||F\r")


@pytest.mark.parametrize(("obx5", "element", "value"), [
    ("105", "valueQuantity", {"value": 105, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}),
    (" -4.5 ", "valueQuantity", {"value": -4.5, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                 "code": "mg/dL"}),
    ("see comment", "valueString", "see comment"),
])
def test_a_result_without_its_type_keeps_its_value(obx5: str, element: str, value: object) -> None:
    result = map_message(_result("", obx5, "mg/dL"))
    [observation] = result.of_type("Observation")
    assert observation[element] == value
    [warning] = [n for n in result.notes if not isinstance(n, str)]
    assert (warning.segment_id, warning.segment_seq, warning.field, warning.severity) == ("OBX", 4, 2, "W")
    # the same as a sender that names the type
    typed = "NM" if element == "valueQuantity" else "ST"
    assert map_message(_result(typed, obx5, "mg/dL")).of_type("Observation") == [observation]


def test_a_structured_value_without_its_type_is_warned_about_not_guessed() -> None:
    result = map_message(_result("", "260385009^Negative^SCT"))
    [observation] = result.of_type("Observation")
    assert not any(k.startswith("value") for k in observation)
    assert any("not plain text" in str(n) for n in result.notes)


def test_the_message_given_is_left_as_sent() -> None:
    msg = parse_message(_result("", "105"))
    inferred, _ = with_inferred_types(msg)
    assert msg.all("OBX")[0][2] == "" and inferred.all("OBX")[0][2] == "NM"
    typed = parse_message(_result("NM", "105"))
    assert with_inferred_types(typed) == (typed, [])


def test_mllp_acknowledges_with_a_warning_and_stores_the_value() -> None:
    store = Store()
    [outcome] = write_mapped(store, [Work(1, _result("", "105", "mg/dL"))], map_batch([Work(1, _result("", "105", "mg/dL"))]))
    segments = outcome.ack.split("\r")
    assert segments[1].startswith("MSA|AA|c1")
    err = next(s for s in segments if s.startswith("ERR"))
    assert "OBX^4^2" in err and "|W|" in err and "OBX-2 is empty" in err
    [(rid,)] = store.cursor().execute("SELECT id FROM resources WHERE resource_type = 'Observation'").fetchall()
    assert store.read("Observation", rid)["valueQuantity"]["value"] == 105


def test_files_store_the_value(tmp_path: Path) -> None:
    f = tmp_path / "r.hl7"
    f.write_text(_result("", "105", "mg/dL"))
    store = Store()
    summary = Ingestor(store).ingest_paths([f])
    assert summary.rejected == 0
    [(rid,)] = store.cursor().execute("SELECT id FROM resources WHERE resource_type = 'Observation'").fetchall()
    assert store.read("Observation", rid)["valueQuantity"]["value"] == 105
