"""The official SQL-on-FHIR v2 test suite (fixtures/sql-on-fhir-v2, 22 files, 134 cases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapping.viewdef.conformance import load_suite, run_case, write_report

SUITE = Path(__file__).resolve().parents[2] / "fixtures" / "sql-on-fhir-v2"
CASES = load_suite(SUITE)


def test_suite_is_complete() -> None:
    assert len({c.file for c in CASES}) == 22
    assert len(CASES) == 134


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.name}" for c in CASES])
def test_official_case(case) -> None:
    passed, why = run_case(case)
    assert passed, why


def test_report_format(tmp_path: Path) -> None:
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "basic.json").write_text((SUITE / "basic.json").read_text())
    out = tmp_path / "report.json"
    passed, total = write_report(tmp_path / "suite", out)
    report = json.loads(out.read_text())
    assert (passed, total) == (11, 11)
    assert report["basic.json"]["tests"][0] == {"name": "basic attribute", "result": {"passed": True}}


def test_published_report_is_all_green() -> None:
    report = json.loads((SUITE.parents[1] / "docs" / "sql-on-fhir-report.json").read_text())
    results = [t["result"]["passed"] for suite in report.values() for t in suite["tests"]]
    assert len(results) == 134 and all(results)
