"""The shipped views (mapping/views) against rows computed independently in plain Python over the
parsed JSON of Synthea patients (fixtures/views/synthea_sample.ndjson) and of hand-written twin
inputs (fixtures/views/twin_inputs.ndjson: CGM, insulin, vancomycin, unit variants)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from mapping.viewdef import compile_view, run_view
from mapping.viewdef.conformance import load_resources
from mapping.views import load_view, view_names

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "views"
RESOURCES = [json.loads(line) for name in ("synthea_sample.ndjson", "twin_inputs.ndjson")
             for line in (FIXTURES / name).open()]
LOINC = "http://loinc.org"
LIVE = {"final", "amended", "corrected", "preliminary", "registered", "unknown"}


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    load_resources(con, RESOURCES)
    return con


def _rows(rows: list[dict]) -> Counter:
    def norm(v: object) -> object:
        return round(float(v), 6) if isinstance(v, int | float) and not isinstance(v, bool) else v
    return Counter(json.dumps({k: norm(v) for k, v in r.items()}, sort_keys=True) for r in rows)


def _of(rtype: str) -> list[dict]:
    return [r for r in RESOURCES if r["resourceType"] == rtype]


def _patient(r: dict) -> str:
    return r["subject"]["reference"].split("/")[-1]


def _loinc_codes(r: dict) -> list[str]:
    return [c["code"] for c in r["code"].get("coding", []) if c.get("system") == LOINC]


def expected_measurement(codes: list[str], factors: dict[str, float], column: str) -> list[dict]:
    rows = []
    for o in _of("Observation"):
        matched = [c for c in _loinc_codes(o) if c in codes]
        q = o.get("valueQuantity", {})
        if not matched or o["status"] not in LIVE or q.get("code") not in factors:
            continue
        rows.append({"id": o["id"], "patient_id": _patient(o), "effective_time": o.get("effectiveDateTime"),
                     "loinc": matched[0], "value": q["value"], "unit": q["code"],
                     column: q["value"] * factors[q["code"]]})
    return rows


MEASUREMENTS = {
    "glucose_readings": (["99504-3", "2339-0", "2345-7", "41653-7", "15074-8"], {"mg/dL": 1, "mmol/L": 18.016},
                         "glucose_mg_dl"),
    "carbohydrate_intake": (["9059-7"], {"g": 1}, "carbs_g"),
    "drug_levels": (["20578-1", "4092-3", "4090-7", "4089-9"], {"mg/L": 1, "ug/mL": 1}, "level_mg_l"),
    "body_weight": (["29463-7"], {"kg": 1, "g": 0.001, "[lb_av]": 0.45359237}, "weight_kg"),
    "body_height": (["8302-2"], {"cm": 1, "m": 100, "[in_i]": 2.54}, "height_cm"),
    "creatinine": (["2160-0", "38483-4"], {"mg/dL": 1, "umol/L": 1 / 88.42}, "creatinine_mg_dl"),
    "egfr": (["33914-3", "62238-1"], {"mL/min/{1.73_m2}": 1, "mL/min/1.73m2": 1}, "egfr_ml_min_1_73m2"),
}


@pytest.mark.parametrize("name", sorted(MEASUREMENTS))
def test_measurement_view(con, name: str) -> None:
    expected = expected_measurement(*MEASUREMENTS[name])
    assert expected, "fixture must exercise the view"
    assert _rows(run_view(con, load_view(name))) == _rows(expected)


def test_glucose_converts_mmol_and_skips_missing_values(con) -> None:
    rows = {r["id"]: r for r in run_view(con, load_view("glucose_readings"))}
    assert rows["cgm-3"]["glucose_mg_dl"] == pytest.approx(7.1 * 18.016)
    assert rows["glu-molar"]["glucose_mg_dl"] == pytest.approx(5.5 * 18.016)
    assert "cgm-4" not in rows and "hr-1" not in rows
    assert {r["loinc"] for r in rows.values()} == {"99504-3", "2339-0", "2345-7", "41653-7", "15074-8"}


def test_vital_signs_include_components(con) -> None:
    expected = []
    for o in _of("Observation"):
        cats = [c["code"] for cat in o.get("category", []) for c in cat.get("coding", [])]
        if "vital-signs" not in cats or o["status"] not in LIVE:
            continue
        base = {"id": o["id"], "patient_id": _patient(o), "effective_time": o.get("effectiveDateTime")}
        if "valueQuantity" in o:
            codes = _loinc_codes(o)
            expected.append({**base, "loinc": codes[0] if codes else None, "value": o["valueQuantity"]["value"],
                             "unit": o["valueQuantity"].get("code")})
        for comp in o.get("component", []):
            if "valueQuantity" in comp:
                codes = [c["code"] for c in comp["code"]["coding"] if c.get("system") == LOINC]
                expected.append({**base, "loinc": codes[0] if codes else None,
                                 "value": comp["valueQuantity"]["value"], "unit": comp["valueQuantity"].get("code")})
    got = run_view(con, load_view("vital_signs"))
    assert {"8480-6", "8462-4"} <= {r["loinc"] for r in got}
    assert _rows(got) == _rows(expected)


def test_lab_results(con) -> None:
    expected = []
    for o in _of("Observation"):
        cats = [c["code"] for cat in o.get("category", []) for c in cat.get("coding", [])]
        if "laboratory" not in cats or "valueQuantity" not in o or o["status"] not in LIVE:
            continue
        codes = _loinc_codes(o)
        display = [o["code"]["text"]] if "text" in o["code"] else []
        first_display = [c["display"] for c in o["code"]["coding"] if "display" in c][:1]
        expected.append({"id": o["id"], "patient_id": _patient(o), "effective_time": o.get("effectiveDateTime"),
                         "loinc": codes[0] if codes else None,
                         "display": sorted(set(display + first_display)),
                         "value": o["valueQuantity"]["value"], "unit": o["valueQuantity"].get("code")})
    got = [{**r, "display": sorted(r["display"])} for r in run_view(con, load_view("lab_results"))]
    assert len(got) > 500
    assert _rows(got) == _rows(expected)


def test_conditions(con) -> None:
    def code(c: dict, systems: tuple[str, ...]) -> str | None:
        return next((x["code"] for x in c["code"]["coding"] if x.get("system") in systems), None)

    expected = [{"id": c["id"], "patient_id": _patient(c), "snomed": code(c, ("http://snomed.info/sct",)),
                 "icd10": code(c, ("http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10")),
                 "display": c["code"].get("text"),
                 "clinical_status": (c.get("clinicalStatus", {}).get("coding") or [{}])[0].get("code"),
                 "onset_time": c.get("onsetDateTime"), "abatement_time": c.get("abatementDateTime")}
                for c in _of("Condition")]
    assert _rows(run_view(con, load_view("conditions"))) == _rows(expected)


def test_medication_requests(con) -> None:
    expected = []
    for m in _of("MedicationRequest"):
        codings = m.get("medicationCodeableConcept", {}).get("coding", [])
        expected.append({"id": m["id"], "patient_id": _patient(m),
                         "rxnorm": next((c["code"] for c in codings if c["system"].endswith("/rxnorm")), None),
                         "display": next((c["display"] for c in codings if "display" in c), None),
                         "status": m["status"], "authored_on": m.get("authoredOn")})
    assert _rows(run_view(con, load_view("medication_requests"))) == _rows(expected)


def test_insulin_administrations(con) -> None:
    rows = {r["id"]: r for r in run_view(con, load_view("insulin_administrations"))}
    assert set(rows) == {"ins-bolus-1", "ins-bolus-2", "ins-basal-1"}
    assert rows["ins-bolus-1"] == {"id": "ins-bolus-1", "patient_id": "twin-p1", "kind": "bolus",
                                       "start_time": "2026-03-02T08:15:00Z", "end_time": None, "dose_u": 6.0,
                                       "rate_u_per_h": None}
    assert rows["ins-bolus-2"]["dose_u"] == 8.0
    assert rows["ins-basal-1"] == {"id": "ins-basal-1", "patient_id": "twin-p1", "kind": "basal",
                                   "start_time": "2026-03-02T00:00:00Z", "end_time": "2026-03-02T06:00:00Z",
                                   "dose_u": None, "rate_u_per_h": 0.8}


def test_drug_doses(con) -> None:
    expected = []
    for m in _of("MedicationAdministration"):
        dose = m.get("dosage", {}).get("dose", {})
        if dose.get("code") != "mg":
            continue
        concept = m["medicationCodeableConcept"]
        names = ([concept["text"]] if "text" in concept else []) + [c["display"] for c in concept["coding"]][:1]
        expected.append({"id": m["id"], "patient_id": _patient(m),
                         "rxnorm": next(c["code"] for c in concept["coding"] if c["system"].endswith("/rxnorm")),
                         "medication": sorted(set(names)),
                         "start_time": m.get("effectiveDateTime") or m["effectivePeriod"]["start"],
                         "end_time": m.get("effectivePeriod", {}).get("end"), "dose_mg": dose["value"]})
    got = [{**r, "medication": sorted(r["medication"])} for r in run_view(con, load_view("drug_doses"))]
    assert _rows(got) == _rows(expected)


def test_patient_demographics(con) -> None:
    expected = [{"id": p["id"], "birth_date": p.get("birthDate"), "gender": p.get("gender"),
                 "deceased": "deceasedDateTime" in p or p.get("deceasedBoolean") is True} for p in _of("Patient")]
    assert _rows(run_view(con, load_view("patient_demographics"))) == _rows(expected)


def test_every_shipped_view_compiles_and_is_documented() -> None:
    docs = (FIXTURES.parents[1] / "docs" / "views.md").read_text()
    for name in view_names():
        view = load_view(name)
        assert view["name"] == name
        compiled = compile_view(view, "(SELECT * FROM resources)")
        assert compiled.columns and f"`{name}`" in docs
