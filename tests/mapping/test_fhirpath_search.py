"""Every SearchParameter expression of the store's core resource types compiles, and extracts on
real Synthea resources exactly what a plain-Python walk over the parsed JSON finds."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from mapping.fhirpath import compile_search_expression

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "data"
TYPES = ("Patient", "Observation", "Encounter", "Condition", "MedicationRequest", "MedicationAdministration",
         "DiagnosticReport", "Procedure", "Immunization", "CarePlan", "Provenance")
SAMPLE = [json.loads(line) for line in (ROOT / "fixtures" / "views" / "synthea_sample.ndjson").open()]


def _search_parameters() -> list[tuple[str, str, str]]:
    bundle = json.loads((SHARED / "fhir-r4" / "search-parameters.json").read_text())
    out = []
    for entry in bundle["entry"]:
        sp = entry["resource"]
        for base in sp.get("base", []):
            if base in TYPES and sp.get("expression"):
                out.append((base, sp["code"], sp["expression"]))
    return out


PARAMS = _search_parameters()


# -- an independent evaluator for the shapes these expressions take, over parsed JSON --------------
def _walk(items: list, step: str) -> list:
    """Child ``step`` of each item; a choice element ``effective`` is whichever ``effective[X]`` is present."""
    out: list = []
    for item in items:
        if not isinstance(item, dict):
            continue
        keys = [step] if step in item else [k for k in item if re.fullmatch(step + "[A-Z][A-Za-z]*", k)]
        for key in keys:
            child = item[key]
            out.extend(child if isinstance(child, list) else [child])
    return out


def _choice(items: list, name: str, type_name: str) -> list:
    return _walk(items, name + type_name[0].upper() + type_name[1:])


def _ref_type(ref: dict) -> str | None:
    m = re.search(r"([A-Za-z]+)/[^/]+$", ref.get("reference", ""))
    return m.group(1) if m else None


def _evaluate_part(part: str, resource: dict) -> list:
    part = part.strip()
    m = re.fullmatch(r"\((\w+)\.([\w.]+) as (\w+)\)(?:\.(\w+))?", part)
    if m:
        rtype, path, type_name, tail = m.groups()
        if rtype != resource["resourceType"]:
            return []
        *head, last = path.split(".")
        items = [resource]
        for step in head:
            items = _walk(items, step)
        items = _choice(items, last, type_name)
        return _walk(items, tail) if tail else items
    m = re.fullmatch(r"(\w+)((?:\.\w+)*?)(?:\.as\((\w+)\)|\.where\((.*)\))?", part)
    assert m, part
    rtype, path, as_type, where = m.groups()
    if rtype != resource["resourceType"]:
        return []
    steps = [s for s in path.split(".") if s]
    items = [resource]
    for step in steps[:-1] if as_type else steps:
        items = _walk(items, step)
    if as_type:
        items = _choice(items, steps[-1], as_type)
    if where:
        is_type = re.fullmatch(r"resolve\(\) is (\w+)", where)
        system = re.fullmatch(r"system='(\w+)'", where)
        assert is_type or system, where
        items = [i for i in items if (_ref_type(i) == is_type.group(1) if is_type else i.get("system") == system.group(1))]
    return items


def python_values(expression: str, resource: dict) -> list:
    if expression == "Patient.deceased.exists() and Patient.deceased != false":
        deceased = [v for k, v in resource.items() if k.startswith("deceased")]
        return [bool(deceased) and deceased[0] is not False]
    parts = expression.split(" | ")
    if len(parts) == 1:
        return _evaluate_part(parts[0], resource)
    out: list = []
    for part in parts:
        for v in _evaluate_part(part, resource):
            if v not in out:
                out.append(v)
    return out


def _canonical(values: list) -> Counter:
    return Counter(json.dumps(v, sort_keys=True) for v in values)


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE r (resource_type VARCHAR, id VARCHAR, json JSON)")
    con.executemany("INSERT INTO r VALUES (?, ?, ?)", [(r["resourceType"], r["id"], json.dumps(r)) for r in SAMPLE])
    return con


def test_all_core_types_have_parameters() -> None:
    assert {base for base, _, _ in PARAMS} == set(TYPES)
    assert len(PARAMS) == 212


@pytest.mark.parametrize("base,code,expression", PARAMS, ids=[f"{b}.{c}" for b, c, _ in PARAMS])
def test_search_expression_matches_python(con, base: str, code: str, expression: str) -> None:
    sql = compile_search_expression(expression, "json", base)
    rows = con.execute(f"SELECT id, json, {sql} FROM r WHERE resource_type = ?", [base]).fetchall()
    for rid, doc, values in rows:
        got = [json.loads(v) for v in values]
        assert _canonical(got) == _canonical(python_values(expression, json.loads(doc))), (rid, expression)


def test_search_values_found_on_synthea(con) -> None:
    """Guard against a vacuous pass: the sample really carries indexed values."""
    cases = {("Observation", "Observation.code | Observation.component.code"): 1000,
             ("Observation", "(Observation.value as Quantity) | (Observation.value as SampledData)"): 899,
             ("Encounter", "Encounter.subject.where(resolve() is Patient)"): 96,
             ("Patient", "Patient.name.given"): 3,
             ("Condition", "Condition.onset.as(dateTime) | Condition.onset.as(Period)"): 49}
    for (base, expression), at_least in cases.items():
        sql = compile_search_expression(expression, "json", base)
        n = con.execute(f"SELECT sum(len({sql})) FROM r WHERE resource_type = ?", [base]).fetchone()[0]
        assert n >= at_least, expression


def test_resolve_is_checks_reference_type(con) -> None:
    sql = compile_search_expression("Encounter.participant.individual.where(resolve() is Patient)", "json",
                                    "Encounter")
    assert con.execute(f"SELECT sum(len({sql})) FROM r WHERE resource_type = 'Encounter'").fetchone()[0] == 0
