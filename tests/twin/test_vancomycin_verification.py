"""Verification: the vancomycin simulator against closed forms and an independent ODE solver."""

import numpy as np
import pytest

from twin.data import Covariates, DosingData
from twin.models.vancomycin import Buelga2005, Goti2018, cockcroft_gault_ml_min

PATIENT = Covariates(weight_kg=80.0, age_y=60.0, sex="male", creatinine_mg_dl=1.1)
DOSES_H = np.array([0.0, 12.0, 24.0, 36.0])
DOSES_MG = np.array([1000.0, 1250.0, 1000.0, 1500.0])
INF_H = np.array([1.0, 1.5, 1.0, 2.0])


def closed_form_one_compartment(cl: float, v: float, t: np.ndarray) -> np.ndarray:
    """Textbook superposition: C = R/CL·(1 − e^(−k·min(τ,T)))·e^(−k·(τ − T)+) for each infusion."""
    k = cl / v
    c = np.zeros_like(t)
    for start, dose, dur in zip(DOSES_H, DOSES_MG, INF_H, strict=True):
        tau = t - start
        during = (tau > 0) & (tau <= dur)
        after = tau > dur
        c[during] += dose / dur / cl * (1 - np.exp(-k * tau[during]))
        c[after] += dose / dur / cl * (1 - np.exp(-k * dur)) * np.exp(-k * (tau[after] - dur))
    return c


def test_one_compartment_matches_closed_form() -> None:
    t = np.linspace(0.05, 60.0, 600)
    params = np.array([[5.2, 70.0], [2.0, 95.0]])
    sim = Buelga2005().simulate(params, DOSES_H, DOSES_MG, INF_H, t)
    for row, (cl, v) in zip(sim, params, strict=True):
        ref = closed_form_one_compartment(cl, v, t)
        np.testing.assert_allclose(row, ref, rtol=1e-6, atol=1e-9)


def sbml_two_compartment(cl: float, vc: float, q: float, vp: float) -> str:
    """A minimal SBML L3 model: amounts in central/peripheral, infusion rate R as a parameter."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version1/core" level="3" version="1">
<model id="vanco2">
<listOfParameters>
 <parameter id="A1" value="0" constant="false"/><parameter id="A2" value="0" constant="false"/>
 <parameter id="R" value="0" constant="false"/><parameter id="CL" value="{cl}" constant="true"/>
 <parameter id="Vc" value="{vc}" constant="true"/><parameter id="Q" value="{q}" constant="true"/>
 <parameter id="Vp" value="{vp}" constant="true"/>
</listOfParameters>
<listOfRules>
 <rateRule variable="A1"><math xmlns="http://www.w3.org/1998/Math/MathML"><apply><minus/><apply><minus/>
  <apply><plus/><ci>R</ci><apply><times/><ci>Q</ci><apply><divide/><ci>A2</ci><ci>Vp</ci></apply></apply></apply>
  <apply><times/><ci>CL</ci><apply><divide/><ci>A1</ci><ci>Vc</ci></apply></apply></apply>
  <apply><times/><ci>Q</ci><apply><divide/><ci>A1</ci><ci>Vc</ci></apply></apply></apply></math></rateRule>
 <rateRule variable="A2"><math xmlns="http://www.w3.org/1998/Math/MathML"><apply><minus/>
  <apply><times/><ci>Q</ci><apply><divide/><ci>A1</ci><ci>Vc</ci></apply></apply>
  <apply><times/><ci>Q</ci><apply><divide/><ci>A2</ci><ci>Vp</ci></apply></apply></apply></math></rateRule>
</listOfRules>
</model></sbml>"""


def roadrunner_concentrations(cl: float, vc: float, q: float, vp: float, t: np.ndarray) -> np.ndarray:
    """Integrate with CVODE piece by piece between infusion switches (R set at each boundary)."""
    import roadrunner  # libroadrunner, a test dependency: the independent ODE solver
    rr = roadrunner.RoadRunner(sbml_two_compartment(cl, vc, q, vp))
    integ = rr.getIntegrator()
    integ.setValue("relative_tolerance", 1e-12)
    integ.setValue("absolute_tolerance", 1e-12)
    integ.setValue("maximum_num_steps", 200000)
    switches = sorted({0.0, float(t[-1])} | set(DOSES_H) | set(DOSES_H + INF_H))
    out: list[float] = []
    for a, b in zip(switches[:-1], switches[1:], strict=True):
        rr["R"] = float(sum(d / h for s, d, h in zip(DOSES_H, DOSES_MG, INF_H, strict=True) if s <= a < s + h))
        inside = t[(t > a) & (t <= b)]
        pts = np.unique(np.r_[a, inside, b])
        res = np.asarray(rr.simulate(times=[float(x) for x in pts], selections=["time", "A1"]))
        out.extend(res[np.isin(res[:, 0], inside), 1])
    return np.asarray(out) / vc


def test_two_compartment_matches_libroadrunner() -> None:
    t = np.linspace(0.25, 60.0, 240)
    cl, vc, q, vp = 4.1, 55.0, Goti2018.q_l_h, 40.0
    sim = Goti2018().simulate(np.array([[cl, vc, vp]]), DOSES_H, DOSES_MG, INF_H, t)[0]
    ref = roadrunner_concentrations(cl, vc, q, vp, t)
    np.testing.assert_allclose(sim, ref, rtol=1e-6)


def test_covariate_models_follow_the_papers() -> None:
    assert cockcroft_gault_ml_min(PATIENT) == pytest.approx((140 - 60) * 80 / (72 * 1.1))
    f = Covariates(80.0, 60.0, "female", 1.1)
    assert cockcroft_gault_ml_min(f) == pytest.approx(0.85 * cockcroft_gault_ml_min(PATIENT))
    cl, v = Buelga2005().typical(PATIENT)
    assert cl == pytest.approx(1.08 * cockcroft_gault_ml_min(PATIENT) * 0.06) and v == pytest.approx(0.98 * 80)
    renal_fine = Covariates(70.0, 20.0, "male", 0.5)  # CG ~233 mL/min, capped at 150
    assert Goti2018().typical(renal_fine)[0] == pytest.approx(4.5 * (150 / 120) ** 0.8)
    hd = Covariates(70.0, 60.0, "male", 6.0, dialysis=True)
    no_hd = Covariates(70.0, 60.0, "male", 6.0)
    ratio = Goti2018().typical(hd) / Goti2018().typical(no_hd)
    np.testing.assert_allclose(ratio, [0.7, 0.5, 1.0])


def test_steady_state_auc_equals_dose_over_clearance() -> None:
    """At steady state the AUC over a dosing interval equals dose/CL (integrate numerically)."""
    m = Goti2018()
    params = np.array([[4.0, 60.0, 38.4]])
    tau, n = 12.0, 40
    t = np.linspace(tau * (n - 1), tau * n, 4001)
    c = m.simulate(params, tau * np.arange(n), np.full(n, 1000.0), np.full(n, 1.0), t)[0]
    assert np.trapezoid(c, t) == pytest.approx(1000.0 / 4.0, rel=1e-4)
    trough, peak, auc24 = m.steady_state(params, 1000.0, tau, 1.0)
    assert auc24[0] == pytest.approx(2 * 1000.0 / 4.0)
    assert trough[0] == pytest.approx(c[0], rel=1e-6) and peak[0] > trough[0]


def test_map_fit_moves_towards_the_levels_and_reports_uncertainty() -> None:
    m = Goti2018()
    true = m.typical(PATIENT) * np.array([0.6, 1.3, 1.0])
    level_t = np.array([38.0 + 1.0, 47.5])
    dd = DosingData(DOSES_H, DOSES_MG, INF_H, PATIENT)
    levels = m.simulate(true[None], DOSES_H, DOSES_MG, INF_H, level_t)[0]
    post = m.calibrate(DosingData(DOSES_H, DOSES_MG, INF_H, PATIENT, level_t, levels), fingerprint="v1")
    assert post.estimates["cl_l_h"] < 0.9 * m.typical(PATIENT)[0]
    assert post.model_id == "vancomycin-goti-2018" and post.data_fingerprint == "v1"
    prior = m.prior(PATIENT, "v1")
    assert post.cv["cl_l_h"] < prior.cv["cl_l_h"]
    pred = m.predict(post, dd, level_t)
    assert np.all(pred.lo95 <= pred.lo80) and np.all(pred.lo80 <= pred.median) and np.all(pred.hi80 <= pred.hi95)
    assert np.all(np.abs(pred.extra["map_mg_l"] - levels) < 0.2 * levels)


def test_recommended_regimen_targets_auc_window() -> None:
    m = Goti2018()
    post = m.prior(PATIENT, "v1")
    best = m.recommend(post)[0]
    assert 400 <= best.auc24_median_mg_h_l <= 600
    assert best.p_target >= max(r.p_target for r in m.recommend(post)) - 1e-9
    assert best.trough_95[0] <= best.trough_80[0] <= best.trough_median_mg_l <= best.trough_80[1]
