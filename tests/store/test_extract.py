"""The generated Python extractors select exactly what the FHIRPath→SQL compiler selects."""

from __future__ import annotations

import duckdb
import orjson
import pyarrow as pa
import pytest

from store.extract import extractor, type_extractor
from store.search_index import UNINDEXED, _plan
from store.search_params import params_for

COVERED = [
    "Patient", "Observation", "Encounter", "Condition", "MedicationRequest", "MedicationAdministration",
    "DiagnosticReport", "Procedure", "Immunization", "CarePlan", "Provenance",
]


def canonical(values: list) -> list[bytes]:
    return sorted(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values)


@pytest.mark.parametrize("rtype", sorted({"Patient", "Observation", "Encounter", "Condition", "MedicationRequest",
                                          "DiagnosticReport", "Procedure", "Immunization", "CarePlan"}))
def test_python_and_sql_extraction_agree_on_synthea(rtype: str, synthea_resources: list[dict]) -> None:
    resources = [r for r in synthea_resources if r["resourceType"] == rtype][:200]
    assert resources
    con = duckdb.connect()
    con.register("t", pa.table({"id": [r["id"] for r in resources],
                                "json": [orjson.dumps(r).decode() for r in resources]}))
    compared = 0
    for code, p in params_for(rtype).items():
        if not p.expression or p.type == "composite":
            continue
        fn = extractor(p.expression, rtype)
        if fn is None:
            continue
        by_id = dict(con.execute(f"SELECT id, {p.elements_sql('json::JSON')} FROM t").fetchall())
        for r in resources:
            expected = [orjson.loads(v) for v in by_id[r["id"]] or []]
            assert canonical(fn(r)) == canonical(expected), (code, r["id"])
            compared += 1
    assert compared > 0


@pytest.mark.parametrize("rtype", COVERED)
def test_every_indexed_parameter_is_covered(rtype: str) -> None:
    """Each parameter is extracted in Python or, failing that, by compiled SQL: none is left out but
    ``_id`` and ``_lastUpdated``, which searches read from the resources' id and commit time."""
    _, fast, slow = _plan(rtype)
    indexed = {c for c, _ in fast} | {c for c, _, _ in slow}
    expected = {c for c, p in params_for(rtype).items()
                if p.expression and p.type not in ("composite", "special") and c not in UNINDEXED}
    assert indexed == expected


def test_unsupported_expression_falls_back() -> None:
    fn, supported = type_extractor("Patient", ("Patient.name[0].family", "Patient.name"))
    assert supported == (False, True)
    assert fn({"resourceType": "Patient", "name": [{"family": "X"}]}) == ([{"family": "X"}],)


def test_deceased_is_extracted_in_python_as_the_sql_compiler_evaluates_it() -> None:
    """``Patient.deceased.exists() and Patient.deceased != false``: the one R4 parameter of the
    covered types that needed the SQL compiler (a write of Patients cost an extra statement)."""
    _, fast, slow = _plan("Patient")
    assert ("deceased", "idx_token") in fast and not slow
    expression = params_for("Patient")["deceased"].expression
    fn = extractor(expression, "Patient")
    assert fn is not None
    patients = [{"resourceType": "Patient", "id": str(i), **extra} for i, extra in enumerate([
        {}, {"deceasedBoolean": False}, {"deceasedBoolean": True}, {"deceasedDateTime": "2020-01-02"},
    ])]
    con = duckdb.connect()
    con.register("t", pa.table({"id": [p["id"] for p in patients], "json": [orjson.dumps(p).decode() for p in patients]}))
    by_id = dict(con.execute(f"SELECT id, {params_for('Patient')['deceased'].elements_sql('json::JSON')} FROM t").fetchall())
    got = [fn(p) for p in patients]
    assert got == [[False], [False], [True], [True]]
    assert got == [[orjson.loads(v) for v in by_id[p["id"]] or []] for p in patients]


def test_choice_narrowing_and_resolve_filter() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "Group/g1"},
        "valueQuantity": {"value": 1},
        "component": [{"valueString": "a"}, {"valueQuantity": {"value": 2}}],
    }
    assert extractor("Observation.subject.where(resolve() is Patient)", "Observation")(obs) == []
    assert extractor("(Observation.component.value as Quantity)", "Observation")(obs) == [{"value": 2}]
    assert extractor("Observation.value.ofType(string) | Observation.component.value.ofType(string)",
                     "Observation")(obs) == ["a"]
