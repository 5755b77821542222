"""Run the trend twin over the store: fit per patient as of a time, publish predictions."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from store.store import Store
from twin.features import Series, observation_series
from twin.publish import ModelRef, PredictedValue, model_device, predicted_observation, provenance
from twin.trend import MODEL_ID, MODEL_VERSION, BayesianTrend, TrendPrior

_MEASURES = Path(__file__).with_name("data") / "trend_measures.json"
MODEL = ModelRef(MODEL_ID, MODEL_VERSION, "Bayesian linear trend")
_YEAR_S = 365.25 * 86400.0


@cache
def trend_measures() -> list[dict[str, Any]]:
    """Measures the trend twin follows (data file)."""
    return json.loads(_MEASURES.read_text())


@dataclass(frozen=True)
class TrendResult:
    """One published prediction, summarized for people."""

    patient_id: str
    measure: str
    unit: str
    n_points: int
    last_value: float
    last_time: datetime
    slope_per_year: float
    predicted: PredictedValue
    observation_id: str


def predict_series(series: Series, measure: dict[str, Any]) -> tuple[PredictedValue, float]:
    """Fit the trend to one series and predict one horizon ahead of its last point."""
    model = BayesianTrend(TrendPrior(**measure["prior"]))
    fit = model.fit(series.years(), series.values)
    when = series.times[-1] + timedelta(days=measure["horizon_days"])
    pred = fit.predict(np.array([when.timestamp() / _YEAR_S]))
    intervals = {lvl: (float(pred[f"low_{lvl}"][0]), float(pred[f"high_{lvl}"][0])) for lvl in (80, 95)}
    return PredictedValue(when, float(pred["mean"][0]), intervals), fit.slope_per_year


def run_trend_twins(
    store: Store, as_of: datetime, on_patient: Callable[[str], None] | None = None
) -> list[TrendResult]:
    """Fit every patient's trend for each measure with data as of ``as_of`` and write the results back."""
    results: list[TrendResult] = []
    to_write: list[dict[str, Any]] = [model_device(MODEL)]
    for measure in trend_measures():
        code = {
            "coding": [{"system": measure["system"], "code": measure["code"], "display": measure["display"]}],
            "text": f"Predicted {measure['title']}",
        }
        for pid, series in observation_series(store, measure["accept_codes"], as_of).items():
            if series.values.size < measure["min_points"]:
                continue
            predicted, slope = predict_series(series, measure)
            derived = [f"Observation/{oid}" for oid in series.observation_ids]
            obs = predicted_observation(
                patient_id=pid,
                model=MODEL,
                code=code,
                category_code=measure["category"],
                unit=measure["unit"],
                value=predicted,
                derived_from=derived,
                origin=series.times[-1],
                key=f"{measure['name']}|{measure['horizon_days']}d",
            )
            prov = provenance(
                targets=[f"Observation/{obs['id']}"], model=MODEL, inputs=derived, recorded=as_of, patient_id=pid
            )
            to_write += [obs, prov]
            results.append(
                TrendResult(
                    pid, measure["name"], measure["unit"], int(series.values.size), float(series.values[-1]),
                    series.times[-1], slope, predicted, obs["id"],
                )
            )
            if on_patient:
                on_patient(pid)
    store.write(to_write)
    return results
