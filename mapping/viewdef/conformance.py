"""Runner for the official SQL-on-FHIR v2 test suite, and writer of its report format.

The suite's JSON files each carry ``resources`` and ``tests``; a case expects rows (``expect``), a
row count (``expectCount``) or an error (``expectError``). Rows are compared as multisets: the
specification does not order view output. The report is ``{file: {"tests": [{"name", "result":
{"passed"}}]}}``::

    python -m mapping.viewdef.conformance fixtures/sql-on-fhir-v2 docs/sql-on-fhir-report.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from mapping.viewdef.compile import compile_view
from mapping.viewdef.run import run_compiled

RESOURCES_DDL = """CREATE OR REPLACE TABLE {name} (resource_type VARCHAR, id VARCHAR, version_id BIGINT,
    last_updated TIMESTAMPTZ, deleted BOOLEAN, patient_id VARCHAR, json JSON)"""


@dataclass(frozen=True)
class Case:
    file: str
    name: str
    resources: tuple[dict[str, Any], ...]
    test: dict[str, Any]


def load_suite(folder: Path) -> list[Case]:
    cases = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("_"):
            continue
        suite = json.loads(path.read_text())
        for test in suite["tests"]:
            cases.append(Case(path.name, test["title"], tuple(suite["resources"]), test))
    return cases


def load_resources(con: duckdb.DuckDBPyConnection, resources: Iterable[dict[str, Any]],
                   name: str = "resources") -> None:
    """Create a table with the store's resource columns holding ``resources`` (version 1, live)."""
    con.execute(RESOURCES_DDL.format(name=name))
    rows = [(r["resourceType"], r.get("id"), json.dumps(r)) for r in resources]
    con.executemany(f"INSERT INTO {name} VALUES (?, ?, 1, now(), FALSE, NULL, ?)", rows)


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 9)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def _multiset(rows: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(_canonical(row), sort_keys=True) for row in rows)


def run_case(case: Case) -> tuple[bool, str]:
    """Run one case; return (passed, explanation when not)."""
    test = case.test
    con = duckdb.connect()
    try:
        load_resources(con, case.resources)
        compiled = compile_view(test["view"])
        rows = run_compiled(con, compiled)
    except (ValueError, duckdb.Error) as exc:
        if test.get("expectError"):
            return True, ""
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        con.close()
    if test.get("expectError"):
        return False, f"expected an error, got {len(rows)} rows"
    if "expectColumns" in test and [c.name for c in compiled.columns] != test["expectColumns"]:
        return False, f"columns {[c.name for c in compiled.columns]} != {test['expectColumns']}"
    if "expectCount" in test:
        ok = len(rows) == test["expectCount"]
        return ok, "" if ok else f"{len(rows)} rows, expected {test['expectCount']}"
    got, want = _multiset(rows), _multiset(test["expect"])
    return got == want, "" if got == want else f"got {got}\nwant {want}"


def report(cases: Iterable[Case]) -> Iterator[tuple[Case, bool, str]]:
    for case in cases:
        passed, why = run_case(case)
        yield case, passed, why


def write_report(folder: Path, out: Path) -> tuple[int, int]:
    """Run the suite in ``folder`` and write the official report JSON; return (passed, total)."""
    result: dict[str, dict[str, list[dict[str, Any]]]] = {}
    passed = total = 0
    for case, ok, _ in report(load_suite(folder)):
        result.setdefault(case.file, {"tests": []})["tests"].append({"name": case.name, "result": {"passed": ok}})
        passed += ok
        total += 1
    out.write_text(json.dumps(result, indent=2) + "\n")
    return passed, total


if __name__ == "__main__":
    ok, n = write_report(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{ok} passed, {n - ok} failed")
