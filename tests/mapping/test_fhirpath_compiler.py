"""FHIRPath compiler semantics, evaluated by DuckDB on one resource at a time."""

from __future__ import annotations

import json

import duckdb
import pytest

from mapping.fhirpath import FhirPathError, compile_fhirpath, parse, render
from mapping.fhirpath.values import natural

PATIENT = {"resourceType": "Patient", "id": "p1", "active": True, "gender": "male", "birthDate": "1970-06",
           "name": [{"use": "official", "family": "F1", "given": ["a", "b"]}, {"family": "F2", "given": ["a"]}],
           "link": [{"other": {"reference": "http://x.org/fhir/Patient/p1/_history/2"}}],
           "generalPractitioner": [{"reference": "urn:uuid:1234"}]}
OBS = {"resourceType": "Observation", "id": "o1", "status": "final",
       "valueQuantity": {"value": 7.25, "code": "mmol/L"}, "effectiveDateTime": "2026-03-02T08:00:00Z",
       "component": [{"valueString": "x"}, {"valueQuantity": {"value": 1}}]}


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


def evaluate(con: duckdb.DuckDBPyConnection, expr: str, resource: dict = PATIENT) -> object:
    sql = render(natural(compile_fhirpath(expr, "r.json", resource["resourceType"])))
    return con.execute(f"SELECT {sql} FROM (SELECT ?::JSON AS json) AS r", [json.dumps(resource)]).fetchone()[0]


@pytest.mark.parametrize("expr,expected", [
    ("name.given", ["a", "b", "a"]),
    ("name.given.distinct().count()", 2),
    ("name.given | name.family", None),
    ("name.where(use = 'official').family", ["F1"]),
    ("name[1].family", "F2"),
    ("name.family.last()", "F2"),
    ("name.skip(1).family", ["F2"]),
    ("name.given.take(2)", ["a", "b"]),
    ("name.exists(family = 'F2')", True),
    ("name.all(given.exists())", True),
    ("active and {}", None),
    ("active.not() and {}", False),
    ("{} or active", True),
    ("active implies {}", None),
    ("gender = {}", None),
    ("name.given = name.given", True),
    ("gender in ('female' | 'male')", True),
    ("('a' | 'b') contains 'c'", False),
    ("gender.startsWith('ma') and gender.upper() = 'MALE'", True),
    ("gender.substring(1, 2) & '-' & gender.length().toString()", "al-4"),
    ("iif(active, 'yes', 'no')", "yes"),
    ("7 div 2 + 7 mod 2 + 1.5", 5.5),
    ("birthDate.lowBoundary() + '/' + birthDate.highBoundary()", "1970-06-01/1970-06-30"),
    ("link.other.getReferenceKey(Patient)", ["p1"]),
    ("generalPractitioner.getReferenceKey()", ["1234"]),
    ("generalPractitioner.getReferenceKey(Practitioner)", []),
    ("link.other.where(resolve() is Patient).count()", 1),
    ("Observation.status", None),
])
def test_patient_expressions(con, expr: str, expected: object) -> None:
    got = evaluate(con, expr)
    if expr == "name.given | name.family":
        assert sorted(got) == ["F1", "F2", "a", "b"]
    else:
        assert got == expected


def test_choice_types(con) -> None:
    assert evaluate(con, "value.ofType(Quantity).value * 18", OBS) == pytest.approx(130.5)
    assert evaluate(con, "(value as Quantity).code", OBS) == "mmol/L"
    assert evaluate(con, "value is Quantity", OBS) is True
    assert evaluate(con, "value.ofType(string)", OBS) is None
    assert evaluate(con, "component.value.ofType(string)", OBS) == ["x"]
    assert evaluate(con, "effective.ofType(dateTime).highBoundary()", OBS) == "2026-03-02T08:00:00.999Z"


def test_singleton_paths_compile_to_one_json_path() -> None:
    sql = render(natural(compile_fhirpath("value.ofType(Quantity).value", "json", "Observation")))
    assert sql == "TRY_CAST(json_extract(json, '$.valueQuantity.value') AS DOUBLE)"
    assert render(natural(compile_fhirpath("name.first().family", "json", "Patient"))) == \
        "json_extract_string(json, '$.name[0].family')"


def test_more_than_one_value_where_one_is_needed_fails_the_query(con) -> None:
    with pytest.raises(duckdb.Error, match="more than one"):
        evaluate(con, "name.family.single()")


@pytest.mark.parametrize("expr", ["name.", "@@", "name.where(", "'open", "1 +"])
def test_syntax_errors(expr: str) -> None:
    with pytest.raises(FhirPathError):
        parse(expr)


def test_unknown_function_and_constant() -> None:
    with pytest.raises(FhirPathError, match="unsupported"):
        compile_fhirpath("name.frobnicate()", "json", "Patient")
    with pytest.raises(FhirPathError, match="undefined constant"):
        compile_fhirpath("name.where(use = %nope)", "json", "Patient")
