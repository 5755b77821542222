"""Model inputs read from the store through the shipped SQL-on-FHIR views, point in time.

Two clocks matter: *knowledge time* (what the store held, by ``lastUpdated``)
and *clinical time* (when a reading was taken). A twin fitted "at origin T"
sees only resource versions written by the time of the call and only
measurements and doses with clinical time ≤ T, so nothing after T leaks in.
Every input row is remembered (type, id, version) so that a published result
can cite exactly the data it was fitted on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from mapping.fhirpath.values import sql_string
from mapping.views import load_view
from store.store import Store
from store.views import run
from twin.data import Covariates, DosingData, GlucoseData

GLUCOSE_LOOKBACK = timedelta(days=14)
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "glucose_mg_dl": (10.0, 2000.0),
    "level_mg_l": (0.0, 500.0),
    "weight_kg": (0.3, 500.0),
    "creatinine_mg_dl": (0.05, 30.0),
    "carbs_g": (0.0, 1000.0),
    "dose_u": (0.0, 1000.0),
    "rate_u_per_h": (0.0, 100.0),
    "dose_mg": (0.0, 20000.0),
}
"""Per view column, the values a living patient can have or be given. A reading outside (a device
error, a unit mix-up, a typo) is no measurement, a negative dose no dose: fitted on, a glucose of
0 or 10^308 mg/dL turned the forecast into NaN, and a weight or creatinine of 0 or below failed
the vancomycin covariate model. Left out; the latest plausible reading is used instead."""
PLAUSIBLE_AGE_Y = (0.0, 130.0)

DIALYSIS_CONDITIONS = {("http://snomed.info/sct", "46177005"), ("http://hl7.org/fhir/sid/icd-10-cm", "N18.6"),
                       ("http://hl7.org/fhir/sid/icd-10", "N18.6")}


def _plausible(row: dict[str, Any], column: str) -> bool:
    value = row.get(column)
    low, high = PLAUSIBLE[column]
    return value is not None and low <= float(value) <= high


class MissingData(ValueError):
    """The store does not hold what a model needs for this patient (says what is missing)."""


@dataclass
class InputSet:
    """Rows a fit used: references for derivedFrom/Provenance and a fingerprint of their versions."""

    references: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, store: Store, rtype: str, *rids: str) -> None:
        """Record resources of one type the fit used (their versions read at once: a fit over 14 days
        of CGM uses thousands)."""
        current = store.current_many([(rtype, rid) for rid in rids])
        for rid in rids:
            ref = f"{rtype}/{rid}"
            if ref not in self._seen:
                self._seen.add(ref)
                cur = current.get((rtype, rid))
                self.references.append(ref)
                self.versions.append(f"{ref}/_history/{cur.version_id if cur else 0}")

    @property
    def fingerprint(self) -> str:
        """Same data versions → same fingerprint (the twin is fresh); anything new → a different one."""
        return hashlib.blake2b("\n".join(sorted(self.versions)).encode(), digest_size=12).hexdigest()


def parse_time(text: str | None) -> datetime | None:
    """A FHIR date/dateTime as an aware UTC datetime (a date is taken at midnight UTC)."""
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def view_rows(store: Store, view_name: str, patient_id: str) -> list[dict[str, Any]]:
    """Rows of a shipped view for one patient over the resources known now."""
    source = f"(SELECT * FROM resources WHERE patient_id = {sql_string(patient_id)})"
    _, rows = run(store, load_view(view_name), as_of_sql=source)
    return rows


def _timed(rows: list[dict[str, Any]], column: str, origin: datetime) -> list[tuple[datetime, dict[str, Any]]]:
    out = []
    for row in rows:
        t = parse_time(row.get(column))
        if t is not None and t <= origin:
            out.append((t, row))
    out.sort(key=lambda x: x[0])
    return out


def latest_time(store: Store, view_name: str, column: str, patient_id: str, until: datetime) -> datetime | None:
    """Clinical time of the patient's most recent row of a view at or before ``until``."""
    rows = _timed(view_rows(store, view_name, patient_id), column, until)
    return rows[-1][0] if rows else None


@dataclass(frozen=True)
class GlucoseMeasure:
    """How the patient's glucose is measured (of the most recent reading): predictions are given in the
    same LOINC code and unit, so a client charting them next to the readings needs no conversion."""

    loinc: str
    unit: str  # "mg/dL" or "mmol/L" (the glucose_readings view keeps no other)

    def from_mg_dl(self, glucose_mg_dl: float) -> float:
        return glucose_mg_dl / MG_DL_PER_MMOL_L if self.unit == "mmol/L" else glucose_mg_dl


MG_DL_PER_MMOL_L = next(float(c["valueDecimal"]) for c in load_view("glucose_readings")["constant"]
                        if c["name"] == "mg_dl_per_mmol_l")
"""The glucose_readings view's factor (molar mass of glucose / 10), read from the view: one number."""


def glucose_inputs(
    store: Store, patient_id: str, origin: datetime
) -> tuple[GlucoseData, datetime, InputSet, GlucoseMeasure]:
    """CGM/glucose readings, insulin and carbohydrates of the last 14 days before ``origin``.

    Times are minutes from the window start (returned too), as the glucose model expects; the
    measure is the code and unit of the most recent reading.
    """
    used = InputSet()
    start = origin - GLUCOSE_LOOKBACK
    readings = [
        (t, r) for t, r in _timed(view_rows(store, "glucose_readings", patient_id), "effective_time", origin)
        if t >= start and _plausible(r, "glucose_mg_dl")
    ]
    if len(readings) < 12:
        raise MissingData(f"Patient/{patient_id} has {len(readings)} glucose readings in the 14 days before "
                          f"{origin.isoformat()}; the glucose twin needs at least 12")

    def minutes(t: datetime) -> float:
        return (t - start).total_seconds() / 60.0

    used.add(store, "Observation", *(r["id"] for _, r in readings))
    carbs = [(t, r) for t, r in _timed(view_rows(store, "carbohydrate_intake", patient_id), "effective_time", origin)
             if t >= start and _plausible(r, "carbs_g")]
    used.add(store, "Observation", *(r["id"] for _, r in carbs))
    boluses, basal, insulin = [], [], []
    for t, r in _timed(view_rows(store, "insulin_administrations", patient_id), "start_time", origin):
        end = parse_time(r.get("end_time"))
        if r.get("kind") == "basal" and _plausible(r, "rate_u_per_h"):
            if end is not None and end < start:
                continue
            basal.append((max(t, start), min(end or origin + timedelta(days=1), origin + timedelta(days=1)),
                          float(r["rate_u_per_h"])))
        elif _plausible(r, "dose_u") and t >= start:
            boluses.append((t, float(r["dose_u"])))
        else:
            continue
        insulin.append(r["id"])
    used.add(store, "MedicationAdministration", *insulin)
    data = GlucoseData(
        t_min=np.array([minutes(t) for t, _ in readings]),
        glucose_mg_dl=np.array([float(r["glucose_mg_dl"]) for _, r in readings]),
        bolus_t_min=np.array([minutes(t) for t, _ in boluses]),
        bolus_u=np.array([u for _, u in boluses]),
        basal_start_min=np.array([minutes(a) for a, _, _ in basal]),
        basal_end_min=np.array([minutes(b) for _, b, _ in basal]),
        basal_u_h=np.array([u for _, _, u in basal]),
        carbs_t_min=np.array([minutes(t) for t, _ in carbs]),
        carbs_g=np.array([float(r["carbs_g"]) for _, r in carbs]),
    )
    latest = readings[-1][1]
    return data, start, used, GlucoseMeasure(str(latest.get("loinc") or "99504-3"), str(latest.get("unit") or "mg/dL"))


def _latest(store: Store, view: str, column: str, patient_id: str, origin: datetime, used: InputSet) -> float | None:
    rows = [(t, r) for t, r in _timed(view_rows(store, view, patient_id), "effective_time", origin)
            if _plausible(r, column)]
    if not rows:
        return None
    t, row = rows[-1]
    used.add(store, "Observation", row["id"])
    return float(row[column])


def _age_years(birth: str | None, at: datetime) -> float | None:
    if not birth:
        return None
    try:
        born = date.fromisoformat(birth[:10])
    except ValueError:
        return None
    age_y = (at.date() - born).days / 365.25
    return age_y if PLAUSIBLE_AGE_Y[0] <= age_y <= PLAUSIBLE_AGE_Y[1] else None


def covariates(store: Store, patient_id: str, origin: datetime, used: InputSet) -> Covariates:
    """Weight, age, sex, creatinine and dialysis status as known at ``origin``."""
    demo = view_rows(store, "patient_demographics", patient_id)
    if not demo:
        raise MissingData(f"Patient/{patient_id} is not in the store")
    used.add(store, "Patient", patient_id)
    missing = []
    weight = _latest(store, "body_weight", "weight_kg", patient_id, origin, used)
    creat = _latest(store, "creatinine", "creatinine_mg_dl", patient_id, origin, used)
    age = _age_years(demo[0].get("birth_date"), origin)
    sex = demo[0].get("gender")
    for name, value in (("body weight (LOINC 29463-7)", weight), ("serum creatinine (LOINC 2160-0/38483-4)", creat),
                        ("Patient.birthDate", age), ("Patient.gender", sex)):
        if value is None:
            missing.append(name)
    if missing:
        raise MissingData(f"Patient/{patient_id} lacks {', '.join(missing)} as of {origin.isoformat()}")
    dialysis = False
    for _t, r in _timed(view_rows(store, "dialysis", patient_id), "performed_start", origin):
        dialysis = True
        used.add(store, "Procedure", r["id"])
    for rid, js in store.cursor().execute(
        "SELECT id, json FROM resources WHERE resource_type = 'Condition' AND patient_id = ?", [patient_id]
    ).fetchall():
        cond = orjson.loads(js)
        codes = {(c.get("system"), c.get("code")) for c in (cond.get("code") or {}).get("coding", [])}
        if codes & DIALYSIS_CONDITIONS:
            dialysis = True
            used.add(store, "Condition", rid)
    return Covariates(weight_kg=weight, age_y=age, sex=sex, creatinine_mg_dl=creat, dialysis=dialysis)


VANCOMYCIN_RXNORM = ("11124", "1807510", "1807516", "1807513")


def _vancomycin_history(
    store: Store, patient_id: str, until: datetime
) -> tuple[list[tuple[datetime, dict[str, Any]]], list[tuple[datetime, dict[str, Any]]]]:
    """Plausible vancomycin doses and levels with clinical time ≤ ``until``, in time order."""
    doses = [(t, r) for t, r in _timed(view_rows(store, "drug_doses", patient_id), "start_time", until)
             if _plausible(r, "dose_mg") and ("vancomycin" in str(r.get("medication") or "").lower()
                                              or r.get("rxnorm") in VANCOMYCIN_RXNORM)]
    levels = [(t, r) for t, r in _timed(view_rows(store, "drug_levels", patient_id), "effective_time", until)
              if _plausible(r, "level_mg_l")]
    return doses, levels


COVARIATE_VIEWS = ("body_weight", "creatinine")
"""The covariates a dosing fit reads by time (:func:`covariates`)."""


def latest_vancomycin_time(store: Store, patient_id: str, until: datetime) -> datetime | None:
    """Clinical time of the patient's most recent vancomycin dose start, level or covariate (weight,
    creatinine) at or before ``until``: a creatinine measured after the last level changes the forecast.
    None when the patient was never given vancomycin nor measured: there is nothing to forecast from."""
    doses, levels = _vancomycin_history(store, patient_id, until)
    if not doses and not levels:
        return None
    times = [t for t, _ in doses] + [t for t, _ in levels]
    times += [t for view in COVARIATE_VIEWS if (t := latest_time(store, view, "effective_time", patient_id, until))]
    return max(times)


def dosing_inputs(store: Store, patient_id: str, origin: datetime) -> tuple[DosingData, datetime, InputSet]:
    """Vancomycin doses and levels up to ``origin`` plus covariates; hours from the first dose."""
    used = InputSet()
    cov = covariates(store, patient_id, origin, used)
    doses, levels = _vancomycin_history(store, patient_id, origin)
    t0 = min([t for t, _ in doses] + [t for t, _ in levels] + [origin])

    def hours(t: datetime) -> float:
        return (t - t0).total_seconds() / 3600.0

    infusion = []
    for t, r in doses:
        end = parse_time(r.get("end_time"))
        infusion.append(max((end - t).total_seconds() / 3600.0, 1.0 / 60.0) if end else 1.0)
    used.add(store, "MedicationAdministration", *(r["id"] for _, r in doses))
    used.add(store, "Observation", *(r["id"] for _, r in levels))
    data = DosingData(
        dose_start_h=np.array([hours(t) for t, _ in doses]),
        dose_mg=np.array([float(r["dose_mg"]) for _, r in doses]),
        infusion_h=np.array(infusion),
        covariates=cov,
        level_t_h=np.array([hours(t) for t, _ in levels]),
        level_mg_l=np.array([float(r["level_mg_l"]) for _, r in levels]),
    )
    return data, t0, used
