"""Glucose twin: the two integrators agree, the cohort simulator is sane, forecasts beat the naive one."""

from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from twin.data import GlucoseData, read_raw_cgm_csv
from twin.models.glucose import (
    CI_ML_MIN,
    HORIZON_MIN,
    P2_PER_MIN,
    TAU1_MIN,
    TAU2_MIN,
    CohortInputs,
    GlucoseInsulinModel,
    InputGrid,
)
from twin.validation_report import validate_glucose

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "cgm" / "raw" / "sim-adult-001.csv.gz"
PARAMS = np.array([6e-4, 1.2, 2e-3, 200.0, 45.0])


def scenario() -> GlucoseData:
    return GlucoseData([0.0], [150.0], bolus_t_min=[60.0, 400.0], bolus_u=[6.0, 3.0], basal_start_min=[0.0],
                       basal_end_min=[1440.0], basal_u_h=[1.0], carbs_t_min=[60.0, 400.0], carbs_g=[60.0, 30.0])


def reference_ode(t_eval: np.ndarray) -> np.ndarray:
    """The model equations integrated by an adaptive solver, boluses/meals as 1-min square pulses."""
    si, egp, gezi, vg, tau_m = PARAMS
    d = scenario()
    basal = 1e6 / 60.0

    def pulse(t: float, times: np.ndarray, amounts: np.ndarray) -> float:
        return float(sum(a for s, a in zip(times, amounts, strict=True) if s <= t < s + 1.0))

    def rhs(t: float, x: np.ndarray) -> list[float]:
        isc, ip, ieff, q1, q2, g = x
        delivery = basal + 1e6 * pulse(t, d.bolus_t_min, d.bolus_u)
        return [-isc / TAU1_MIN + delivery / (TAU1_MIN * CI_ML_MIN), (isc - ip) / TAU2_MIN,
                -P2_PER_MIN * ieff + P2_PER_MIN * si * ip, -q1 / tau_m + 1000 * pulse(t, d.carbs_t_min, d.carbs_g),
                (q1 - q2) / tau_m, -(gezi + ieff) * g + egp + q2 / (tau_m * vg)]

    i_ss = basal / CI_ML_MIN
    x0 = [i_ss, i_ss, si * i_ss, 0.0, 0.0, 150.0]
    sol = solve_ivp(rhs, (0, t_eval[-1]), x0, t_eval=t_eval, rtol=1e-9, atol=1e-9, max_step=0.5)
    return sol.y[5]


def test_cohort_simulator_and_convolution_path_agree_with_adaptive_ode() -> None:
    m = GlucoseInsulinModel()
    t = np.arange(0, 1201, 5.0)
    ref = reference_ode(t)
    step = m.simulate(PARAMS[None], CohortInputs.from_patients([scenario()]), t, np.array([150.0]))[0]
    a, b = m.effects(PARAMS, InputGrid.build(scenario(), 0.0, 1201))
    conv = m.run_glucose(np.array([150.0]), a, b)[0, t.astype(int)]
    assert np.max(np.abs(step - ref)) < 1.5
    assert np.max(np.abs(conv - ref)) < 1.5
    assert np.max(np.abs(step - conv)) < 1.0
    assert ref.max() > 200  # the meal really moved glucose


def test_cohort_simulation_is_vectorized_and_per_patient() -> None:
    m = GlucoseInsulinModel()
    base = scenario()
    no_meal = GlucoseData([0.0], [150.0], basal_start_min=[0.0], basal_end_min=[1440.0], basal_u_h=[1.0])
    params = np.vstack([PARAMS, PARAMS, PARAMS * [2, 1, 1, 1, 1]])
    out = m.simulate(params, CohortInputs.from_patients([base, no_meal, base]), np.arange(0, 601, 60.0),
                     np.full(3, 150.0))
    assert out.shape == (3, 11)
    assert out[0, 3] > out[1, 3] + 30  # meal at 60 min raises patient 0 but not patient 1
    assert out[2, -1] < out[0, -1]  # doubled insulin sensitivity lowers glucose


@pytest.fixture(scope="module")
def glucose_report():
    data, _ = read_raw_cgm_csv(str(FIXTURE))
    short = data.until(9 * 1440 - 1)
    return validate_glucose(short, split_t_min=7 * 1440, origin_every_min=30.0)


def test_forecast_beats_naive_and_intervals_are_calibrated(glucose_report) -> None:
    s = glucose_report.summary
    for h in (30, 60, 120):
        assert s[f"model_mard_{h}"] < s[f"naive_mard_{h}"]
        assert 0.65 <= s[f"cover80_{h}"] <= 0.95
        assert s[f"cover95_{h}"] >= s[f"cover80_{h}"]
    # the hypoglycaemia stretch costs some MARD on these hypo-heavy two days and buys Clarke A+B over naive
    assert s["model_mard_30"] < 0.12 and s["model_mard_60"] < 0.14
    assert s["model_ab_30"] >= max(0.98, s["naive_ab_30"])


def test_hypo_stretch_lowers_only_low_forecasts_and_keeps_order() -> None:
    m = GlucoseInsulinModel()
    g = np.array([50.0, 80.0, 99.0, 100.0, 180.0])
    out = m._hypo_stretch(g)
    np.testing.assert_allclose(out[3:], g[3:])
    assert np.all(out[:3] < g[:3]) and np.all(np.diff(out) > 0)


def test_trend_correction_is_fitted_and_follows_the_recent_cgm_slope() -> None:
    data, _ = read_raw_cgm_csv(str(FIXTURE))
    train = data.until(4 * 1440)
    m = GlucoseInsulinModel()
    post = m.calibrate(train, fingerprint="fx")
    beta = np.asarray(post.extra["trend_correction"])
    assert beta.shape == (HORIZON_MIN // 5 + 1, 7) and np.all(np.isfinite(beta))
    origin = float(train.t_min[-1])
    raw = m.forecast_origins(post, train, np.array([origin]), corrected=False)
    fc = m.forecast_origins(post, train, np.array([origin]))
    assert not np.allclose(raw["mean"], fc["mean"])
    # the same history but CGM falling over the last 30 min: the corrected forecast must come out lower
    falling = np.where(train.t_min > origin - 30, train.glucose_mg_dl - (train.t_min - origin + 30) * 0.8,
                       train.glucose_mg_dl)
    fell = GlucoseData(train.t_min, falling, train.bolus_t_min, train.bolus_u, train.basal_start_min,
                       train.basal_end_min, train.basal_u_h, train.carbs_t_min, train.carbs_g)
    low = m.forecast_origins(post, fell, np.array([origin]))
    assert low["mean"][0, 30] < fc["mean"][0, 30] - 5


def test_prediction_respects_origin_and_scenario() -> None:
    data, _ = read_raw_cgm_csv(str(FIXTURE))
    train = data.until(3 * 1440)
    m = GlucoseInsulinModel()
    post = m.calibrate(train, fingerprint="fx")
    origin = 3 * 1440 - 300.0
    base = m.predict(post, data, origin)
    future_cgm_changed = GlucoseData(data.t_min, np.where(data.t_min > origin, 400.0, data.glucose_mg_dl),
                                     data.bolus_t_min, data.bolus_u, data.basal_start_min, data.basal_end_min,
                                     data.basal_u_h, data.carbs_t_min, data.carbs_g)
    np.testing.assert_allclose(m.predict(post, future_cgm_changed, origin).median, base.median)
    meal = m.predict(post, data, origin, carbs_t_min=[origin + 10], carbs_g=[60.0])
    assert meal.median[-1] > base.median[-1] + 20
    assert np.all(base.lo95 <= base.lo80) and np.all(base.hi80 <= base.hi95)
    assert base.data_fingerprint == "fx" and base.model_id == m.model_id
    ident = post.identifiability()
    assert len(ident["correlation"]) == 5
