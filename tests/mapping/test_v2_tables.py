"""The compiled mapping tables: reproducible from the IG's CSVs, conditions parsed right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapping.v2 import build_tables
from mapping.v2.tables import DATA

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_shipped_tables_match_a_fresh_build() -> None:
    tables, skipped = build_tables.build(SHARED / "hl7v2" / "v2-to-fhir-mappings", SHARED / "fhir-r4")
    for kind, content in tables.items():
        shipped = json.loads((DATA / f"{kind}.json").read_text())
        assert shipped == json.loads(json.dumps(content)), f"{kind}.json is stale: rerun build_tables"
    assert sum(len(rules) for rules in tables["segments"].values()) > 800
    assert sum(skipped.values()) < 700


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('IF OBX-2 EQUALS "NM"', ["eq", ["OBX", 2, 0, 0], "NM"]),
        ('IF OBX-2 IN ("ST", "FT")', ["in", ["OBX", 2, 0, 0], ["ST", "FT"]]),
        ("IF PID-29 NOT VALUED", ["not_valued", ["PID", 29, 0, 0]]),
        ('IF OBX-2="ED"', ["eq", ["OBX", 2, 0, 0], "ED"]),
        ("IF RXA-4 NOT EQUALS RXA-3", ["neref", ["RXA", 4, 0, 0], ["RXA", 3, 0, 0]]),
        (
            'IF (OBX-5 LST.count LESS THAN OR EQUALS 1 OR OBX-2 IS "NA") AND OBX-29 NOT IN ("QST")',
            ["and", ["or", ["count", ["OBX", 5, 0, 0], "<=", 1.0], ["eq", ["OBX", 2, 0, 0], "NA"]],
             ["not_in", ["OBX", 29, 0, 0], ["QST"]]],
        ),
    ],
)
def test_condition_grammar(text: str, expected: list[object]) -> None:
    assert build_tables.parse_condition(text, datatype=False) == expected


def test_datatype_conditions_refer_to_components() -> None:
    assert build_tables.parse_condition("IF CWE.2 IS NOT VALUED", datatype=True) == ["not_valued", ["", 2, 0, 0]]


def test_paths_and_reference_targets() -> None:
    assert build_tables.parse_path("identifier[2].type.coding.code") == (
        [["identifier", 2, True], ["type", 1, False], ["coding", 1, False], ["code", 1, False]], None, None
    )
    assert build_tables.parse_path("participant[1].individual(Practitioner)")[1] == "Practitioner"
    assert build_tables.parse_path("[1].family")[2] == 1


def test_pid_map_targets_r4_arrays_correctly() -> None:
    rules = json.loads((DATA / "segments.json").read_text())["PID[Patient]"]
    by_field = {r["f"]: r for r in reversed(rules)}
    assert by_field[3]["steps"] == [["identifier", 2, True]]
    assert by_field[8]["steps"] == [["gender", 1, False]] and by_field[8]["vocab"] == "AdministrativeSex"
