"""Patient twins over the store: fit, simulate a scenario, publish as FHIR, refit when data changes.

``simulate`` answers "what happens if…" without storing anything (``$simulate``);
``publish`` writes the twin's current forecast and recommendation back as FHIR
(Observations, a CarePlan, the model as a Device, Provenance) with deterministic
ids, so a refit replaces them with new versions. ``TwinRegistry`` remembers which
twins exist and the data fingerprint they were fitted on; new data for a
patient marks them stale and a background worker refits and republishes them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from store.store import Store, WriteResult, fhir_instant
from twin.inputs import (
    GlucoseMeasure,
    InputSet,
    MissingData,
    dosing_inputs,
    glucose_inputs,
    latest_time,
    latest_vancomycin_time,
)
from twin.models.base import Posterior, Prediction
from twin.models.glucose import HORIZON_MIN, GlucoseInsulinModel
from twin.models.vancomycin import Buelga2005, Goti2018, Regimen, VancomycinModel
from twin.publish import (
    ModelRef,
    PredictedValue,
    care_plan,
    full_url,
    model_device,
    model_identifier,
    parameters_observation,
    predicted_observation,
    provenance,
)
from twin.scenario import Scenario, SimulationRequest
from twin.vocab import LOINC, TWIN_CS, quantity

VANCO_CODE = {"coding": [{"system": LOINC, "code": "20578-1",
                          "display": "Vancomycin [Mass/volume] in Serum or Plasma"}], "text": "Predicted vancomycin"}
VANCO_TROUGH = {"coding": [{"system": LOINC, "code": "4092-3",
                            "display": "Vancomycin [Mass/volume] in Serum or Plasma --trough"}]}
VANCO_PEAK = {"coding": [{"system": LOINC, "code": "4090-7",
                          "display": "Vancomycin [Mass/volume] in Serum or Plasma --peak"}]}
VANCO_AUC = {"coding": [{"system": TWIN_CS, "code": "vancomycin-auc24",
                         "display": "Vancomycin AUC over 24 h at steady state"}], "text": "Vancomycin AUC24"}
GLUCOSE_DISPLAYS: dict[str, str] = json.loads((Path(__file__).with_name("data") / "glucose_loinc.json").read_text())
"""Display names of the glucose LOINC codes the twin reads (and answers in)."""
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
BOLUS_CANDIDATES_U = np.arange(0.0, 8.01, 0.5)
_TWIN_TAG = b"fhirtwin.org/fhir/CodeSystem/tags"


class UnknownModel(ValueError):
    """The request names a model this server does not have."""


@dataclass
class TwinResult:
    """What one fit + forecast produced, before it is stored or returned."""

    patient_id: str
    model: ModelRef
    posterior: Posterior
    inputs: InputSet
    resources: list[dict[str, Any]]  # parameters Observation first, then predictions
    summary: dict[str, Any] = field(default_factory=dict)
    regimens: list[Regimen] = field(default_factory=list)


def _vanco_model(name: str) -> VancomycinModel:
    return Buelga2005() if name == "vancomycin-buelga-2005" else Goti2018()


MODELS = ("glucose", "vancomycin", "vancomycin-goti-2018", "vancomycin-buelga-2005")


def _ref(model: Any) -> ModelRef:
    return ModelRef(model.model_id, model.model_version, model.__class__.__name__)


def _series(
    patient_id: str, model: ModelRef, pred: Prediction, times: list[datetime], code: dict[str, Any], unit: str,
    category: str, derived: list[str], origin: datetime, key: str,
) -> list[dict[str, Any]]:
    out = []
    for i, when in enumerate(times):
        value = PredictedValue(
            when, float(pred.median[i]),
            {80: (float(pred.lo80[i]), float(pred.hi80[i])), 95: (float(pred.lo95[i]), float(pred.hi95[i]))},
        )
        out.append(predicted_observation(
            patient_id=patient_id, model=model, code=code, category_code=category, unit=unit, value=value,
            derived_from=derived, origin=origin, key=f"{key}|{i}",
        ))
    return out


def _keys(req: SimulationRequest, fingerprint: str, published: bool) -> tuple[str, Callable[[str], str]]:
    """The id key of a result and how its predictions cite the fitted parameters.

    Published output is stored under one key per twin (a refit replaces it) and cites by relative
    reference; a simulation's ids come from the request and the data it was fitted on (the same
    question over the same data gives the same ids, any other question other ids), and its entries
    cite each other by the fullUrl they have in the returned Bundle.
    """
    if published:
        return "published", lambda rid: f"Observation/{rid}"
    return f"simulate|{req.digest}|{fingerprint}", full_url


def _unstored(resources: list[dict[str, Any]], model: ModelRef, published: bool) -> list[dict[str, Any]]:
    """A simulation's resources cite the model by identifier: its Device may not be on the server."""
    if not published:
        for resource in resources:
            resource["device"] = model_identifier(model)
    return resources


def _glucose_code(measure: GlucoseMeasure) -> dict[str, Any]:
    display = GLUCOSE_DISPLAYS.get(measure.loinc, "Glucose")
    return {"coding": [{"system": LOINC, "code": measure.loinc, "display": display}], "text": "Predicted glucose"}


def simulate_glucose(store: Store, patient_id: str, req: SimulationRequest, *, published: bool = False) -> TwinResult:
    """Fit the glucose twin on data up to the origin and forecast under the scenario, in the code and
    unit of the patient's most recent reading."""
    horizon = req.horizon_min or 120.0
    if horizon > HORIZON_MIN:
        raise ValueError(f"the glucose twin forecasts at most {HORIZON_MIN} minutes ahead (asked {horizon:g})")
    data, start, used, measure = glucose_inputs(store, patient_id, req.origin)
    model = GlucoseInsulinModel()
    posterior = model.calibrate(data, used.fingerprint)

    def minutes(t: datetime) -> float:
        return (t - start).total_seconds() / 60.0

    origin_min = minutes(req.origin)
    sc = req.scenario
    pred = model.predict(
        posterior, data, origin_min,
        carbs_t_min=np.array([minutes(t) for t, _ in sc.carbs]), carbs_g=np.array([g for _, g in sc.carbs]),
        bolus_t_min=np.array([minutes(t) for t, _ in sc.boluses]), bolus_u=np.array([u for _, u in sc.boluses]),
        basal_changes=[(minutes(t), minutes(t) + dur, rate) for t, rate, dur in sc.basals],
    )
    steps = np.arange(5, int(horizon) + 1, 5)
    idx = [int(np.argmin(np.abs(pred.t - (origin_min + s)))) for s in steps]
    sub = _finite(Prediction(pred.t[idx], pred.median[idx], pred.lo80[idx], pred.hi80[idx], pred.lo95[idx],
                             pred.hi95[idx], pred.model_id, pred.model_version, pred.data_fingerprint), patient_id)
    in_range = float(np.mean((sub.median >= 70) & (sub.median <= 180)))
    shown = Prediction(sub.t, *(np.array([measure.from_mg_dl(v) for v in a])
                                for a in (sub.median, sub.lo80, sub.hi80, sub.lo95, sub.hi95)),
                       sub.model_id, sub.model_version, sub.data_fingerprint)
    ref = _ref(model)
    key, cite = _keys(req, used.fingerprint, published)
    params = parameters_observation(patient_id=patient_id, model=ref, posterior=posterior,
                                    derived_from=used.references, origin=req.origin, key=key)
    times = [req.origin + timedelta(minutes=float(s)) for s in steps]
    series = _series(patient_id, ref, shown, times, _glucose_code(measure), measure.unit, "laboratory",
                     [cite(params["id"])], req.origin, f"{key}|glucose")
    return TwinResult(patient_id, ref, posterior, used, _unstored([params, *series], ref, published),
                      {"time_in_range_predicted": in_range, "data": data, "start": start, "origin_min": origin_min,
                       "origin": req.origin, "horizon_min": horizon, "measure": measure})


def simulate_vancomycin(
    store: Store, patient_id: str, req: SimulationRequest, *, published: bool = False
) -> TwinResult:
    """Bayesian MAP fit on levels and doses up to the origin; concentrations under the planned doses."""
    data, t0, used = dosing_inputs(store, patient_id, req.origin)
    model = _vanco_model(req.model)
    posterior = (model.calibrate(data, used.fingerprint) if len(data.level_t_h)
                 else model.prior(data.covariates, used.fingerprint))

    def hours(t: datetime) -> float:
        return (t - t0).total_seconds() / 3600.0

    sc = req.scenario
    scenario = data.with_doses(np.array([hours(t) for t, _, _ in sc.doses]), np.array([mg for _, mg, _ in sc.doses]),
                               np.array([m / 60.0 for _, _, m in sc.doses]))
    horizon_h = (req.horizon_min or 72 * 60.0) / 60.0
    t_h = hours(req.origin) + np.arange(1.0, horizon_h + 1e-9, 1.0)
    pred = _finite(model.predict(posterior, scenario, t_h), patient_id)
    ref = _ref(model)
    key, cite = _keys(req, used.fingerprint, published)
    params = parameters_observation(patient_id=patient_id, model=ref, posterior=posterior,
                                    derived_from=used.references, origin=req.origin, key=key)
    times = [req.origin + timedelta(hours=float(h)) for h in np.arange(1.0, horizon_h + 1e-9, 1.0)]
    series = _series(patient_id, ref, pred, times, VANCO_CODE, "mg/L", "laboratory",
                     [cite(params["id"])], req.origin, f"{key}|vancomycin")
    return TwinResult(patient_id, ref, posterior, used, _unstored([params, *series], ref, published),
                      {"levels_used": int(len(data.level_t_h)), "doses_used": int(len(data.dose_mg)),
                       "origin": req.origin})


def _finite(pred: Prediction, patient_id: str) -> Prediction:
    """``pred`` when every forecast and interval bound is a number: a NaN or infinity is published as
    nothing (JSON null) and must never reach a clinician as a forecast."""
    for values in (pred.median, pred.lo80, pred.hi80, pred.lo95, pred.hi95):
        if not np.all(np.isfinite(values)):
            raise MissingData(f"the {pred.model_id} twin gave no finite forecast for Patient/{patient_id} from the "
                              "data it holds (check the inputs it lists as used)")
    return pred


def simulate(store: Store, patient_id: str, req: SimulationRequest) -> TwinResult:
    """Dispatch a simulation request to its model; nothing is written."""
    if store.read("Patient", patient_id) is None:
        raise LookupError(f"Patient/{patient_id} not found")
    if req.model == "glucose":
        return simulate_glucose(store, patient_id, req)
    if req.model in MODELS:
        return simulate_vancomycin(store, patient_id, req)
    raise UnknownModel(f"unknown model {req.model!r}; available: {', '.join(MODELS)}")


def simulation_bundle(result: TwinResult) -> dict[str, Any]:
    """The ``$simulate`` answer: a collection Bundle of predicted Observations plus the fitted parameters."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": fhir_instant(datetime.now(UTC)),
        "entry": [{"fullUrl": full_url(r["id"]), "resource": r} for r in result.resources],
    }


def _medication_activity(
    rxnorm: str, display: str, text: str, description: str, amount: float, unit: str
) -> dict[str, Any]:
    """A proposed medication activity (CarePlan.activity.detail) for an RxNorm ingredient: the drug is
    the activity's product; ``code`` would say what kind of activity it is, not what is given."""
    return {
        "kind": "MedicationRequest",
        "status": "not-started",
        "description": description,
        "productCodeableConcept": {"coding": [{"system": RXNORM, "code": rxnorm, "display": display}], "text": text},
        "quantity": quantity(amount, unit),
    }


def _carbohydrate_activity(description: str) -> dict[str, Any]:
    """Proposed carbohydrate intake (the amount is the clinician's call: the twin checked insulin only)."""
    return {
        "kind": "NutritionOrder",
        "code": {"coding": [{"system": LOINC, "code": "9059-7", "display": "Carbohydrate intake Estimated"}],
                 "text": "fast-acting carbohydrate"},
        "status": "not-started",
        "description": description,
    }


def _glucose_plan(store: Store, result: TwinResult) -> dict[str, Any]:
    """Simulate correction boluses now and propose the one keeping the forecast in range, safely; when even
    no insulin leaves the lower 80% bound below 70 mg/dL, propose carbohydrates instead."""
    model = GlucoseInsulinModel()
    data, origin_min = result.summary["data"], result.summary["origin_min"]
    outcomes = []  # (dose, time in range of the median forecast, lowest lower-80% bound)
    for dose in BOLUS_CANDIDATES_U:
        pred = model.predict(result.posterior, data, origin_min,
                             bolus_t_min=np.array([origin_min] if dose else []), bolus_u=np.array([dose] if dose else []))
        outcomes.append((float(dose), float(np.mean((pred.median >= 70) & (pred.median <= 180))),
                         float(np.min(pred.lo80))))
        if outcomes[-1][2] < 70.0:  # more insulin only lowers glucose further
            break
    safe = [o for o in outcomes if o[2] >= 70.0]
    head = f"Glucose twin ({result.model.model_id} {result.model.version}): "
    measure: GlucoseMeasure = result.summary["measure"]

    def glucose(mg_dl: float) -> str:  # in the unit the patient's readings use
        return f"{measure.from_mg_dl(mg_dl):.{1 if measure.unit == 'mmol/L' else 0}f}"

    activities = []
    if safe:
        best_u, best_tir, _ = max(safe, key=lambda o: (round(o[1], 6), -o[0]))
        text = (f"{head}{'no correction bolus needed' if best_u == 0 else f'correction bolus {best_u:g} U now'} keeps "
                f"the 2-h forecast {best_tir * 100:.0f}% of the time in {glucose(70)}-{glucose(180)} {measure.unit}, "
                f"lower 80% bound at or above {glucose(70)} {measure.unit}.")
        if best_u > 0:
            activities.append(_medication_activity("5856", "insulin", "insulin correction bolus", text, best_u, "U"))
    else:
        low = outcomes[0][2]
        text = (f"{head}no insulin: the 2-h forecast without a bolus reaches a lower 80% bound of {glucose(low)} {measure.unit}; "
                "consider fast-acting carbohydrates and recheck glucose.")
        activities.append(_carbohydrate_activity(text))
    origin = result.summary["origin"]
    return care_plan(patient_id=result.patient_id, model=result.model, title="Glucose twin: 2-hour plan",
                     description=text, activities=activities, key="glucose", derived=result.resources[0]["id"],
                     period=(origin, origin + timedelta(minutes=result.summary["horizon_min"])))


def _vancomycin_plan(result: TwinResult, model: VancomycinModel) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Recommend the regimen most likely to hit AUC24 400-600 and publish its predicted exposure."""
    regimens = model.recommend(result.posterior)
    best = regimens[0]
    result.regimens = regimens
    text = (f"Vancomycin {best.dose_mg:g} mg every {best.interval_h:g} h over {best.infusion_h:g} h: predicted AUC24 "
            f"{best.auc24_median_mg_h_l:.0f} mg·h/L (80% {best.auc24_80[0]:.0f}-{best.auc24_80[1]:.0f}), "
            f"P(400-600) {best.p_target:.0%}, P(>600) {best.p_above_target:.0%}; trough {best.trough_median_mg_l:.1f} "
            f"mg/L, peak {best.peak_median_mg_l:.1f} mg/L.")
    activity = _medication_activity("11124", "vancomycin", "vancomycin intravenous infusion", text, best.dose_mg, "mg")
    activity["scheduledTiming"] = {"repeat": {"frequency": 1, "period": best.interval_h, "periodUnit": "h",
                                              "duration": best.infusion_h, "durationUnit": "h"}}
    activity["dailyAmount"] = quantity(best.dose_mg * 24.0 / best.interval_h, "mg")
    origin = result.summary["origin"]
    plan = care_plan(patient_id=result.patient_id, model=result.model, title="Vancomycin dosing (AUC24 400-600 mg·h/L)",
                     description=text, activities=[activity], key="vancomycin", derived=result.resources[0]["id"],
                     period=(origin, None))
    exposure = []
    for code, unit, median, i80, i95, name in (
        (VANCO_TROUGH, "mg/L", best.trough_median_mg_l, best.trough_80, best.trough_95, "trough"),
        (VANCO_PEAK, "mg/L", best.peak_median_mg_l, best.peak_80, best.peak_95, "peak"),
        (VANCO_AUC, "mg.h/L", best.auc24_median_mg_h_l, best.auc24_80, None, "auc24"),
    ):
        intervals = {80: i80, **({95: i95} if i95 else {})}
        exposure.append(predicted_observation(
            patient_id=result.patient_id, model=result.model, code=code, category_code="laboratory", unit=unit,
            value=PredictedValue(origin + timedelta(hours=48), median, intervals),
            derived_from=[f"Observation/{result.resources[0]['id']}"], origin=origin, key=f"plan|{name}",
            based_on=f"CarePlan/{plan['id']}",
        ))
    return plan, exposure


def publish(store: Store, patient_id: str, model_name: str, origin: datetime | None = None) -> list[WriteResult]:
    """Fit the patient's twin and store its forecast, plan and Provenance.

    The forecast starts at ``origin`` or else at the patient's latest relevant data (glucose: the latest
    reading; vancomycin: the latest dose start or level), never at the wall clock: the same data give
    the same forecast whenever it is refitted, and a patient without such data gets none.
    """
    now = datetime.now(UTC)
    if model_name == "glucose":
        latest = origin or latest_time(store, "glucose_readings", "effective_time", patient_id, now)
        if latest is None:
            raise MissingData(f"Patient/{patient_id} has no glucose readings")
        result = simulate_glucose(store, patient_id, SimulationRequest(model_name, latest, None, Scenario()),
                                  published=True)
        plan = _glucose_plan(store, result)
        extra: list[dict[str, Any]] = []
    else:
        latest = origin or latest_vancomycin_time(store, patient_id, now)
        if latest is None:
            raise MissingData(f"Patient/{patient_id} has no vancomycin doses or levels to forecast from")
        result = simulate_vancomycin(store, patient_id, SimulationRequest(model_name, latest, None, Scenario()),
                                     published=True)
        plan, extra = _vancomycin_plan(result, _vanco_model(model_name))
    for obs in result.resources[1:]:
        obs["basedOn"] = [{"reference": f"CarePlan/{plan['id']}"}]
    targets = [f"Observation/{r['id']}" for r in result.resources + extra] + [f"CarePlan/{plan['id']}"]
    prov = provenance(targets=targets, model=result.model, inputs=result.inputs.references,
                      recorded=datetime.now(UTC), patient_id=patient_id)
    written = store.write([model_device(result.model), *result.resources, plan, *extra, prov])
    TwinRegistry.record(store, patient_id, model_name, result.inputs.fingerprint)
    return written


class TwinRegistry:
    """Which twins exist, what data they were fitted on, and whether new data made them stale."""

    DDL = ("CREATE TABLE IF NOT EXISTS twin_registry (patient_id VARCHAR, model VARCHAR, fingerprint VARCHAR, "
           "fitted_at TIMESTAMPTZ, stale BOOLEAN, error VARCHAR, PRIMARY KEY (patient_id, model))")

    @classmethod
    def ensure(cls, store: Store) -> None:
        with store.write_transaction() as con:
            con.execute(cls.DDL)

    @classmethod
    def record(cls, store: Store, patient_id: str, model: str, fingerprint: str, error: str | None = None) -> None:
        cls.ensure(store)
        with store.write_transaction() as con:
            con.execute("INSERT OR REPLACE INTO twin_registry VALUES (?, ?, ?, ?, false, ?)",
                        [patient_id, model, fingerprint, datetime.now(UTC), error])

    @classmethod
    def rows(cls, store: Store) -> list[dict[str, Any]]:
        cls.ensure(store)
        keys = ("patient_id", "model", "fingerprint", "fitted_at", "stale", "error")
        return [dict(zip(keys, r, strict=True)) for r in store.cursor().execute(
            "SELECT patient_id, model, fingerprint, fitted_at, stale, error FROM twin_registry ORDER BY 1, 2"
        ).fetchall()]

    @classmethod
    def mark_stale(cls, store: Store, patient_ids: set[str]) -> int:
        cls.ensure(store)
        if not patient_ids:
            return 0
        with store.write_transaction() as con:
            marks = ",".join("?" * len(patient_ids))
            con.execute(f"UPDATE twin_registry SET stale = true WHERE patient_id IN ({marks})", list(patient_ids))
            return con.execute(f"SELECT count(*) FROM twin_registry WHERE stale AND patient_id IN ({marks})",
                               list(patient_ids)).fetchone()[0]


class TwinRefresher:
    """Marks twins stale when their patient's data changes and refits them on a background thread.

    Writes of twin output itself (tagged as simulated) do not count as new data, so
    publishing never triggers another refit.
    """

    def __init__(self, store: Store, on_refit: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.on_refit = on_refit
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        TwinRegistry.ensure(store)
        store.on_commit(self._changed)

    def _changed(self, results: list[WriteResult]) -> None:
        """Mark stale the twins of patients whose data a commit changed (one registry query per commit)."""
        tracked = {r["patient_id"] for r in TwinRegistry.rows(self.store)}
        if not tracked:
            return
        patients: set[str] = set()
        for r in results:
            if r.resource_type in ("Device", "CarePlan", "Provenance"):
                continue
            mine = tracked.intersection(r.patients)  # for a deletion: whose data the ended version was
            if not mine:
                continue
            raw = self.store.read_bytes(r.resource_type, r.id) if r.outcome != "deleted" else self._before(r)
            if raw is None or _TWIN_TAG not in raw:  # the twins' own output does not make them stale
                patients |= mine
        if patients and TwinRegistry.mark_stale(self.store, patients):
            self._wake.set()

    def _before(self, deleted: WriteResult) -> bytes | None:
        """The version a deletion ended (a tombstone has no content to say whose data it was)."""
        found = self.store.vread(deleted.resource_type, deleted.id, deleted.version_id - 1)
        return orjson.dumps(found[1]) if found is not None and found[1] is not None else None

    def refresh_once(self) -> int:
        """Refit every stale twin now; returns how many were refitted."""
        done = 0
        for row in TwinRegistry.rows(self.store):
            if not row["stale"]:
                continue
            try:
                publish(self.store, row["patient_id"], row["model"])
            except (MissingData, ValueError) as exc:
                TwinRegistry.record(self.store, row["patient_id"], row["model"], row["fingerprint"], str(exc))
            done += 1
            if self.on_refit:
                self.on_refit(row["patient_id"], row["model"])
        return done

    def start(self) -> None:
        """Run refits in the background until :meth:`stop`."""
        def loop() -> None:
            while not self._stop.is_set():
                if self._wake.wait(timeout=1.0):
                    self._wake.clear()
                    self.refresh_once()
        self._thread = threading.Thread(target=loop, name="twin-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)


def result_summary(result: TwinResult) -> dict[str, Any]:
    """A JSON-friendly summary for the CLI."""
    out = {"patient": result.patient_id, "model": f"{result.model.model_id} {result.model.version}",
           "fingerprint": result.inputs.fingerprint, "inputs": len(result.inputs.references),
           "estimates": result.posterior.estimates, "cv": result.posterior.cv}
    out.update({k: v for k, v in result.summary.items() if isinstance(v, int | float | str)})
    return orjson.loads(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY))
