"""Glucose–insulin twin for CGM + insulin + carbohydrate data (type 1 diabetes).

Model: the "identifiable virtual patient" of Kanderian SS et al., J Diabetes Sci Technol
2009;3:1047 — Bergman's minimal model driven by two-compartment subcutaneous insulin kinetics
and a two-compartment (gamma-2) meal absorption:

    dIsc/dt  = −Isc/τ1 + ID(t)/(τ1·CI)           insulin (µU/mL), ID delivery (µU/min)
    dIp/dt   = (Isc − Ip)/τ2
    dIeff/dt = −p2·Ieff + p2·SI·Ip
    dQ1/dt   = −Q1/τm + carbs(t) (mg/min);  dQ2/dt = (Q1 − Q2)/τm;   RA = Q2/(τm·VG)  (mg/dL/min)
    dG/dt    = −(GEZI + Ieff)·G + EGP + RA

τ1, τ2, CI, p2 are fixed at population values (CI and SI are not separately identifiable from
CGM); SI, EGP, GEZI, VG and τm are estimated per patient with log-normal priors.

Two exact-in-the-linear-part integrators share one glucose step (an exponential integrator
with the trapezoidal mean of the coefficients over each minute):
- `simulate`: cohort stepping at 1-min resolution, vectorized over patients, insulin chain by its
  exact transition matrix, boluses and meals as impulses (the hot path of cohort runs);
- `effects`: for one patient, the insulin action per unit SI and the meal appearance as causal
  convolutions of the 1-min input series with the impulse responses (fast enough to sit inside
  the optimiser and to strip "future" events from forecasts made at many origins at once).

Forecasting (`predict`, `forecast_origins`): a Kalman filter over [G, d] — d a slowly mean-reverting
unexplained glucose flux (mg/dL/min) — re-estimates the state from CGM up to the origin, then the
model runs forward with only inputs known at the origin (basal continues as programmed).
A per-patient trend correction, fitted on the training days, then adjusts the model forecast with the
recent CGM rate of change (what the mechanistic model and the filter miss), and a fixed downward
stretch below 100 mg/dL makes the forecast conservative where a missed hypoglycaemia is costly.
Intervals combine Laplace-posterior parameter draws with the filter's propagated variance, and are
scaled by horizon-wise quantiles of standardized forecast errors on the training days.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import expm
from scipy.signal import fftconvolve

from twin.calibration import fit_map
from twin.data import GlucoseData
from twin.models.base import Parameter, Posterior, Prediction

TAU1_MIN = 49.0
TAU2_MIN = 47.0
CI_ML_MIN = 2010.0
P2_PER_MIN = 0.0106
KERNEL_MIN = 960
HORIZON_MIN = 120
UU_PER_U = 1e6


@dataclass(frozen=True)
class CohortInputs:
    """Insulin and carbohydrate events of many patients (patient index per event), times in minutes."""

    n_patients: int
    bolus_patient: np.ndarray
    bolus_t_min: np.ndarray
    bolus_u: np.ndarray
    carbs_patient: np.ndarray
    carbs_t_min: np.ndarray
    carbs_g: np.ndarray
    basal_patient: np.ndarray
    basal_start_min: np.ndarray
    basal_end_min: np.ndarray
    basal_u_h: np.ndarray

    @classmethod
    def from_patients(cls, patients: list[GlucoseData]) -> CohortInputs:
        def cat(attr: str) -> np.ndarray:
            return np.concatenate([getattr(p, attr) for p in patients])

        def idx(attr: str) -> np.ndarray:
            return np.concatenate([np.full(len(getattr(p, attr)), i) for i, p in enumerate(patients)]).astype(int)

        return cls(len(patients), idx("bolus_u"), cat("bolus_t_min"), cat("bolus_u"), idx("carbs_g"),
                   cat("carbs_t_min"), cat("carbs_g"), idx("basal_u_h"), cat("basal_start_min"),
                   cat("basal_end_min"), cat("basal_u_h"))


def _insulin_chain() -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-min transition of [Isc, Ip, Ieff per unit SI] and the jump of Isc per µU injected."""
    a = np.array([[-1 / TAU1_MIN, 0, 0], [1 / TAU2_MIN, -1 / TAU2_MIN, 0], [0, P2_PER_MIN, -P2_PER_MIN]])
    return expm(a), np.array([1.0 / (TAU1_MIN * CI_ML_MIN), 0.0, 0.0])


PHI_INSULIN, JUMP_INSULIN = _insulin_chain()


def _insulin_kernel() -> np.ndarray:
    """Ieff per unit SI, k minutes after 1 µU injected (k = 0 … KERNEL_MIN − 1)."""
    x = JUMP_INSULIN.copy()
    out = np.empty(KERNEL_MIN)
    for k in range(KERNEL_MIN):
        out[k] = x[2]
        x = PHI_INSULIN @ x
    return out


INSULIN_KERNEL = _insulin_kernel()


def meal_kernel(tau_m_min: np.ndarray) -> np.ndarray:
    """Glucose appearance (mg/min) k minutes after 1 g eaten: 1000·k/τm²·e^(−k/τm); shape (..., KERNEL_MIN)."""
    k = np.arange(KERNEL_MIN)
    tau = np.asarray(tau_m_min, float)[..., None]
    return 1000.0 * k / tau**2 * np.exp(-k / tau)


def glucose_step(g: np.ndarray, a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """One minute of dG/dt = −a·G + b with a, b taken as their mean over the minute (exponential integrator)."""
    a = 0.5 * (a0 + a1)
    e = np.exp(-a)
    return g * e + 0.5 * (b0 + b1) * (-np.expm1(-a)) / a


@dataclass(frozen=True)
class InputGrid:
    """One patient's inputs on a 1-min grid starting at t0_min: insulin (µU per minute bin), carbs (g)."""

    t0_min: float
    insulin_uu: np.ndarray
    carbs_g: np.ndarray
    basal_uu_min: np.ndarray

    @classmethod
    def build(cls, data: GlucoseData, t0_min: float, n_min: int) -> InputGrid:
        ins = np.zeros(n_min)
        carbs = np.zeros(n_min)
        basal = np.zeros(n_min)
        grid = t0_min + np.arange(n_min)
        for s, e, r in zip(data.basal_start_min, data.basal_end_min, data.basal_u_h, strict=True):
            basal[(grid >= s) & (grid < e)] += r * UU_PER_U / 60.0
        k = np.floor(data.bolus_t_min - t0_min).astype(int)
        ok = (k >= 0) & (k < n_min)
        np.add.at(ins, k[ok], data.bolus_u[ok] * UU_PER_U)
        k = np.floor(data.carbs_t_min - t0_min).astype(int)
        ok = (k >= 0) & (k < n_min)
        np.add.at(carbs, k[ok], data.carbs_g[ok])
        return cls(t0_min, ins + basal, carbs, basal)


class GlucoseInsulinModel:
    """Kanderian identifiable-virtual-patient model with Kalman-filter state estimation."""

    model_id = "glucose-ivp-kanderian-2009"
    model_version = "1.1"
    parameters = (
        Parameter("si_ml_per_uu_min", 5e-4, 1.0),
        Parameter("egp_mg_dl_min", 1.3, 0.5),
        Parameter("gezi_per_min", 2.2e-3, 0.6),
        Parameter("vg_dl", 250.0, 0.5),
        Parameter("tau_m_min", 50.0, 0.4),
    )
    fit_origin_every_min = 60
    residual_scale_mg_dl = 15.0
    # Kalman filter noise grid: G process (mg/dL)²/min, flux process (mg/dL/min)²/min, CGM SD (mg/dL)
    kf_q_g = (0.25, 1.0, 4.0)
    kf_q_d = (1e-4, 1e-3, 1e-2)
    kf_r = (3.0, 6.0, 12.0)
    kf_flux_tau_min = 90.0
    # Trend correction: ridge penalty on the non-intercept coefficients (log-glucose regression).
    trend_ridge = 1.0
    # Hypoglycaemia-conservative map g -> T - (1 + gain)(T - g) below T, chosen once on the pooled training
    # days (0-9) of the six fixture patients: the largest 30-min Clarke A+B whose 30-min MARD stays within
    # 0.3 points of the unstretched forecast (bench/bench_twin.py --tune-hypo prints that grid).
    hypo_threshold_mg_dl = 100.0
    hypo_gain = 0.25

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    # ---------------------------------------------------------------- cohort simulation
    def simulate(self, params: np.ndarray, inputs: CohortInputs, t_min: np.ndarray, g0_mg_dl: np.ndarray,
                 t0_min: float = 0.0) -> np.ndarray:
        """Glucose (mg/dL) of N patients at integer minutes t_min (ascending, ≥ t0) from G(t0) = g0.

        params (N, 5) natural scale. The insulin chain starts at its basal steady state (basal at t0),
        the gut empty. Fixed 1-min steps; the loop runs over time, never over patients.
        """
        params = np.atleast_2d(params)
        n = params.shape[0]
        si, egp, gezi, vg, tau_m = (params[:, i] for i in range(5))
        steps = int(np.max(t_min) - t0_min)
        out_idx = np.asarray(t_min - t0_min, int)
        out = np.empty((n, len(out_idx)))

        def events(patient: np.ndarray, t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            k = np.floor(t - t0_min).astype(int)
            order = np.argsort(k, kind="stable")
            k, patient, v = k[order], patient[order], v[order]
            return np.searchsorted(k, np.arange(steps + 2)), patient, v

        bol = events(inputs.bolus_patient, inputs.bolus_t_min, inputs.bolus_u * UU_PER_U)
        carb = events(inputs.carbs_patient, inputs.carbs_t_min, inputs.carbs_g * 1000.0)
        rate_t = np.r_[inputs.basal_start_min, inputs.basal_end_min]
        rate_v = np.r_[inputs.basal_u_h, -inputs.basal_u_h] * UU_PER_U / 60.0
        rate_p = np.r_[inputs.basal_patient, inputs.basal_patient]
        started = rate_t <= t0_min
        basal = np.zeros(n)
        np.add.at(basal, rate_p[started], rate_v[started])
        rate = events(rate_p[~started], rate_t[~started], rate_v[~started])

        # basal steady state of the chain per µU/min: x = (I − Φ)⁻¹ Γ with Γ = Σ of one minute of impulses
        ss = np.linalg.solve(np.eye(3) - PHI_INSULIN, JUMP_INSULIN)
        isc, ip, ieff1 = (ss[i] * basal for i in range(3))
        q1 = np.zeros(n)
        q2 = np.zeros(n)
        em = np.exp(-1.0 / tau_m)
        g = np.asarray(g0_mg_dl, float) * np.ones(n)
        p = PHI_INSULIN
        a_prev = gezi + si * ieff1
        b_prev = egp + q2 / (tau_m * vg)
        j = 0
        for k in range(steps + 1):
            if j < len(out_idx) and out_idx[j] == k:
                out[:, j] = g
                j += 1
            if k == steps:
                break
            for (starts, who, val), target in ((bol, "ins"), (carb, "carb"), (rate, "rate")):
                lo, hi = starts[k], starts[k + 1]
                if hi > lo:
                    if target == "ins":
                        np.add.at(isc, who[lo:hi], val[lo:hi] * JUMP_INSULIN[0])
                    elif target == "carb":
                        np.add.at(q1, who[lo:hi], val[lo:hi])
                    else:
                        np.add.at(basal, who[lo:hi], val[lo:hi])
            isc = isc + basal * JUMP_INSULIN[0]
            isc, ip, ieff1 = (p[0, 0] * isc, p[1, 0] * isc + p[1, 1] * ip,
                              p[2, 0] * isc + p[2, 1] * ip + p[2, 2] * ieff1)
            q1, q2 = em * q1, em * (q2 + q1 / tau_m)
            a_next = gezi + si * ieff1
            b_next = egp + q2 / (tau_m * vg)
            g = glucose_step(g, a_prev, a_next, b_prev, b_next)
            a_prev, b_prev = a_next, b_next
        return out

    # ---------------------------------------------------------------- single-patient effects
    def effects(self, params: np.ndarray, grid: InputGrid) -> tuple[np.ndarray, np.ndarray]:
        """a(t) = GEZI + SI·J(t) and b(t) = EGP + RA(t) on the grid for params (D, 5): arrays (D, n_min)."""
        params = np.atleast_2d(params)
        n = len(grid.insulin_uu)
        j = self.insulin_action(grid)
        ra = fftconvolve(grid.carbs_g[None, :], meal_kernel(params[:, 4]), axes=1)[:, :n]
        return (params[:, 2:3] + params[:, 0:1] * j[None, :], params[:, 1:2] + ra / params[:, 3:4])

    @staticmethod
    def insulin_action(grid: InputGrid) -> np.ndarray:
        """Ieff per unit SI on the grid; the basal before t0 is assumed to have run for long (steady state)."""
        n = len(grid.insulin_uu)
        pre = np.full(KERNEL_MIN, grid.basal_uu_min[0])
        series = np.r_[pre, grid.insulin_uu]
        return fftconvolve(series, INSULIN_KERNEL)[KERNEL_MIN : KERNEL_MIN + n]

    @staticmethod
    def run_glucose(g0: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Integrate G over the last axis of a, b (…, H+1) from g0 (…); returns (…, H+1)."""
        out = np.empty(np.broadcast_shapes(a.shape, b.shape))
        out[..., 0] = g0
        for h in range(a.shape[-1] - 1):
            out[..., h + 1] = glucose_step(out[..., h], a[..., h], a[..., h + 1], b[..., h], b[..., h + 1])
        return out

    # ---------------------------------------------------------------- calibration
    def calibrate(self, data: GlucoseData, fingerprint: str) -> Posterior:
        """MAP by multiple shooting: from an origin every hour, start at the CGM value, simulate 2 h with the
        recorded inputs and match the CGM; then tune the Kalman filter noise by innovation likelihood.
        """
        t0 = float(np.floor(data.t_min[0]))
        n = int(np.ceil(data.t_min[-1] - t0)) + 1
        grid = InputGrid.build(data, t0, n)
        k_obs = np.round(data.t_min - t0).astype(int)
        cgm = np.full(n, np.nan)
        cgm[k_obs] = data.glucose_mg_dl
        origins = np.arange(0, n - HORIZON_MIN, self.fit_origin_every_min)
        origins = origins[np.isfinite(cgm[origins])]
        win = origins[:, None] + np.arange(HORIZON_MIN + 1)[None, :]
        target = cgm[win]
        mask = np.isfinite(target)
        mask[:, 0] = False
        j = self.insulin_action(grid)[win]
        carb_win = grid.carbs_g

        def residuals(x: np.ndarray) -> np.ndarray:
            si, egp, gezi, vg, tau_m = np.exp(x)
            ra = fftconvolve(carb_win, meal_kernel(tau_m))[:n][win]
            g = self.run_glucose(target[:, 0], gezi + si * j, egp + ra / vg)
            return (g[mask] - target[mask]) / self.residual_scale_mg_dl

        mu = np.log([p.typical for p in self.parameters])
        om = np.diag([p.omega**2 for p in self.parameters])
        starts = [mu, mu + np.log([3.0, 1.0, 1.0, 1.0, 1.0]), mu + np.log([0.33, 1.0, 1.0, 1.0, 1.0])]
        fit = fit_map(residuals, starts, prior_mean=mu, prior_cov=om)
        # Overlapping 2-h windows reuse each reading HORIZON/every times: inflate the Laplace covariance.
        rms = float(np.sqrt(np.mean(residuals(fit.x) ** 2)))
        overlap = HORIZON_MIN / self.fit_origin_every_min
        cov = fit.cov * max(rms, 1.0) ** 2 * overlap
        post = Posterior(self.model_id, self.model_version, fingerprint, self.names, fit.x, cov,
                         rms * self.residual_scale_mg_dl, fit.cost, fit.n_starts, fit.n_converged)
        post.extra["kf"] = self._tune_filter(np.exp(fit.x), grid, cgm)
        post.extra["t_end_min"] = float(data.t_min[-1])
        post.extra["trend_correction"], post.extra["interval_z"] = self._fit_trend_and_intervals(post, data)
        return post

    def _filter(self, a: np.ndarray, b: np.ndarray, cgm: np.ndarray, q_g: np.ndarray, q_d: np.ndarray,
                r: np.ndarray, g_init: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kalman filter over [G, d] on the 1-min grid for a batch (leading axis) of settings.

        Returns filtered means (B, n, 2), covariances (B, n, 3 as [Pgg, Pgd, Pdd]) and the innovation
        log-likelihood (B,). Linear in the state because a(t), b(t) are known functions of the inputs.
        """
        bsz, n = a.shape[0], a.shape[1]
        rho = np.exp(-1.0 / self.kf_flux_tau_min)
        g = np.full(bsz, g_init)
        d = np.zeros(bsz)
        pgg, pgd, pdd = np.full(bsz, 400.0), np.zeros(bsz), np.full(bsz, 1e-3)
        means = np.empty((bsz, n, 2))
        covs = np.empty((bsz, n, 3))
        loglik = np.zeros(bsz)
        r2 = r**2
        for k in range(n):
            if k > 0:
                am = 0.5 * (a[:, k - 1] + a[:, k])
                phi = np.exp(-am)
                gam = -np.expm1(-am) / am
                g = phi * g + gam * (0.5 * (b[:, k - 1] + b[:, k]) + d)
                d = rho * d
                pgg, pgd, pdd = (phi * phi * pgg + 2 * phi * gam * pgd + gam * gam * pdd + q_g,
                                 rho * (phi * pgd + gam * pdd), rho * rho * pdd + q_d)
            y = cgm[k]
            if y == y:
                s = pgg + r2
                innov = y - g
                loglik -= 0.5 * (innov * innov / s + np.log(s))
                kg, kd = pgg / s, pgd / s
                g = g + kg * innov
                d = d + kd * innov
                pgg, pgd, pdd = (1 - kg) * pgg, (1 - kg) * pgd, pdd - kd * pgd
            means[:, k, 0], means[:, k, 1] = g, d
            covs[:, k, 0], covs[:, k, 1], covs[:, k, 2] = pgg, pgd, pdd
        return means, covs, loglik

    def _tune_filter(self, params: np.ndarray, grid: InputGrid, cgm: np.ndarray) -> dict[str, float]:
        """Pick the filter noise from a grid by the 30- and 60-min forecast error on the training days.

        The one-step innovation likelihood prefers a jumpy flux that hurts longer horizons, so the
        settings are scored the way they will be used: open-loop forecasts from origins every 30 min
        (training data, recorded inputs).
        """
        combos = np.array([(qg, qd, r) for qg in self.kf_q_g for qd in self.kf_q_d for r in self.kf_r])
        a, b = self.effects(params, grid)
        a, b = np.repeat(a, len(combos), 0), np.repeat(b, len(combos), 0)
        g_init = float(cgm[np.isfinite(cgm)][0])
        means, covs, _ = self._filter(a, b, cgm, combos[:, 0], combos[:, 1], combos[:, 2], g_init)
        n = len(cgm)
        ko = np.arange(360, n - 61, 30)
        ko = ko[np.isfinite(cgm[ko + 30]) & np.isfinite(cgm[ko + 60])]
        win = ko[:, None] + np.arange(61)[None, :]
        kf = {"q_g": combos[:, 0:1], "q_d": combos[:, 1:2]}
        mean, _ = self._propagate(means[:, ko], covs[:, ko], a[:, win], b[:, win], kf)
        err = (mean[..., [30, 60]] - cgm[win][None][..., [30, 60]]) / cgm[win][None][..., [30, 60]]
        best = combos[int(np.argmin(np.mean(np.abs(err), axis=(1, 2))))]
        return {"q_g": float(best[0]), "q_d": float(best[1]), "r_mg_dl": float(best[2])}

    # ---------------------------------------------------------------- forecasting
    def forecast_origins(self, posterior: Posterior, data: GlucoseData, origins_min: np.ndarray,
                         n_draws: int = 12, seed: int = 0, scaled: bool = True,
                         keep_future: bool = False, corrected: bool = True) -> dict[str, np.ndarray]:
        """Forecasts from many origins at once, each using only CGM and events at or before its origin.

        Returns arrays (n_origins, H+1) for horizons 0…HORIZON_MIN minutes: mean, sd, lo80, hi80, lo95, hi95,
        and `features` (n_origins, 4) of the trend correction. The filter runs once forward over the data
        (it is causal, so its state at an origin saw only the past); the future boluses and meals of each
        origin are removed from its effect series unless keep_future is set (then every event in `data`
        after the origin is a planned scenario event). corrected=False skips the trend correction;
        scaled=False gives unit-normal intervals without the hypoglycaemia stretch (both are used to fit
        the correction and the interval scaling on training days).
        """
        t0 = float(np.floor(data.t_min[0]))
        n = int(np.ceil(max(data.t_min[-1], np.max(origins_min)) - t0)) + HORIZON_MIN + 1
        grid = InputGrid.build(data, t0, n)
        cgm = np.full(n, np.nan)
        k_obs = np.round(data.t_min - t0).astype(int)
        cgm[k_obs] = data.glucose_mg_dl
        rng = np.random.default_rng(seed)
        draws = np.exp(np.vstack([posterior.log_map, posterior.sample_log(n_draws - 1, rng)]))
        a, b = self.effects(draws, grid)
        kf = posterior.extra["kf"]
        nd = len(draws)
        means, covs, _ = self._filter(a, b, cgm, np.full(nd, kf["q_g"]), np.full(nd, kf["q_d"]),
                                      np.full(nd, kf["r_mg_dl"]), float(data.glucose_mg_dl[0]))
        ko = np.floor(np.asarray(origins_min, float) - t0 + 1e-6).astype(int)
        hz = np.arange(HORIZON_MIN + 1)
        win = ko[:, None] + hz[None, :]
        # effects of inputs strictly after the origin, removed: (bolus part of insulin, carbs)
        fut_ins = (grid.insulin_uu - grid.basal_uu_min)[win]
        fut_ins[:, 0] = 0.0
        fut_carbs = grid.carbs_g[win]
        fut_carbs[:, 0] = 0.0
        if keep_future:
            fut_ins[:] = 0.0
            fut_carbs[:] = 0.0
        j_fut = fftconvolve(fut_ins, INSULIN_KERNEL[None, : HORIZON_MIN + 1], axes=1)[:, : HORIZON_MIN + 1]
        ra_fut = fftconvolve(fut_carbs[None], meal_kernel(draws[:, 4])[:, None, : HORIZON_MIN + 1],
                             axes=2)[..., : HORIZON_MIN + 1]
        a_o = a[:, win] - draws[:, 0, None, None] * j_fut[None]
        b_o = b[:, win] - ra_fut / draws[:, 3, None, None]
        mean, var = self._propagate(means[:, ko], covs[:, ko], a_o, b_o, kf)
        mu = mean.mean(0)
        sd = np.sqrt(var.mean(0) + mean.var(0) + kf["r_mg_dl"] ** 2)
        last = np.maximum.accumulate(np.where(np.isfinite(cgm), np.arange(n), 0))
        features = np.stack([cgm[last[ko]], cgm[last[np.maximum(ko - 15, 0)]], cgm[last[np.maximum(ko - 30, 0)]],
                             means[0, ko, 0]], axis=1)
        beta = posterior.extra.get("trend_correction")
        if corrected and beta is not None:
            step = np.arange(0, HORIZON_MIN + 1, 5)
            beta_h = np.stack([np.interp(hz, step, col) for col in np.asarray(beta).T], axis=1)
            factor = np.exp(np.einsum("ohp,hp->oh", self._trend_features(features, mu), beta_h))
            mu, sd = mu * factor, sd * factor
        z = posterior.extra.get("interval_z") if scaled else None
        zq = np.asarray(z) if z is not None else np.tile(np.array([-1.2816, 1.2816, -1.96, 1.96])[:, None],
                                                         (1, HORIZON_MIN // 5 + 1))
        zh = np.array([np.interp(hz, np.arange(0, HORIZON_MIN + 1, 5), row) for row in zq])
        if scaled:
            mu = self._hypo_stretch(mu)
        return {"t_min": np.asarray(origins_min)[:, None] + hz[None, :], "mean": mu, "sd": sd,
                "lo80": np.maximum(mu + zh[0] * sd, 20.0), "hi80": mu + zh[1] * sd,
                "lo95": np.maximum(mu + zh[2] * sd, 20.0), "hi95": mu + zh[3] * sd, "features": features}

    def _propagate(self, m0: np.ndarray, c0: np.ndarray, a: np.ndarray, b: np.ndarray,
                   kf: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Open-loop mean and variance of G from the filtered state at each origin; shapes (D, O, H+1)."""
        rho = np.exp(-1.0 / self.kf_flux_tau_min)
        g, d = m0[..., 0], m0[..., 1]
        pgg, pgd, pdd = c0[..., 0], c0[..., 1], c0[..., 2]
        mean = np.empty(a.shape)
        var = np.empty(a.shape)
        mean[..., 0], var[..., 0] = g, pgg
        for h in range(a.shape[-1] - 1):
            am = 0.5 * (a[..., h] + a[..., h + 1])
            phi = np.exp(-am)
            gam = -np.expm1(-am) / am
            g = phi * g + gam * (0.5 * (b[..., h] + b[..., h + 1]) + d)
            d = rho * d
            pgg, pgd, pdd = (phi * phi * pgg + 2 * phi * gam * pgd + gam * gam * pdd + kf["q_g"],
                             rho * (phi * pgd + gam * pdd), rho * rho * pdd + kf["q_d"])
            mean[..., h + 1], var[..., h + 1] = g, pgg
        return mean, var

    def _fit_trend_and_intervals(self, posterior: Posterior, data: GlucoseData
                                 ) -> tuple[list[list[float]], list[list[float]]]:
        """Trend-correction coefficients and interval quantiles, both from forecasts on the training days.

        Per 5-min horizon, a ridge regression of log(CGM(t+h)) − log(forecast) on features known at the
        origin (`_trend_features`); then the horizon-wise quantiles (10, 90, 2.5, 97.5%) of the corrected
        forecast errors (after the hypoglycaemia stretch, as published) standardized by the correspondingly
        scaled predictive SD.
        """
        origins = np.arange(data.t_min[0] + 360.0, data.t_min[-1] - HORIZON_MIN, 15.0)
        fc = self.forecast_origins(posterior, data, origins, n_draws=4, scaled=False, corrected=False)
        hz = np.arange(0, HORIZON_MIN + 1, 5)
        obs = np.interp(fc["t_min"][:, hz], data.t_min, data.glucose_mg_dl)
        x = self._trend_features(fc["features"], fc["mean"][:, hz])
        y = np.log(obs) - np.log(fc["mean"][:, hz])
        penalty = self.trend_ridge * np.diag(np.r_[0.0, np.ones(x.shape[2] - 1)])
        beta = np.stack([np.linalg.solve(x[:, j].T @ x[:, j] + penalty, x[:, j].T @ y[:, j])
                         for j in range(len(hz))])
        factor = np.exp(np.einsum("ohp,hp->oh", x, beta))
        z = (obs - self._hypo_stretch(fc["mean"][:, hz] * factor)) / (fc["sd"][:, hz] * factor)
        return beta.tolist(), np.quantile(z, [0.1, 0.9, 0.025, 0.975], axis=0).tolist()

    @staticmethod
    def _trend_features(at_origin: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """Regressors (O, H, 7) of the trend correction for forecasts `mean` (O, H) from origin features (O, 4).

        at_origin holds the last CGM at, 15 and 30 min before the origin and the filtered glucose. The
        regressors are log ratios: CGM vs filter, the last two 15-min CGM changes, depth below 90 mg/dL,
        level vs 140 mg/dL and the model's own predicted change (which the regression may shrink or amplify).
        """
        c0, c15, c30, g_filt = (np.log(at_origin[:, i]) for i in range(4))
        per_origin = np.stack([np.ones_like(c0), c0 - g_filt, c0 - c15, c15 - c30,
                               np.maximum(0.0, np.log(90.0) - c0), c0 - np.log(140.0)], axis=1)
        change = np.log(mean / mean[:, :1])
        return np.concatenate([np.broadcast_to(per_origin[:, None, :], (*mean.shape, 6)), change[..., None]],
                              axis=2)

    def _hypo_stretch(self, g_mg_dl: np.ndarray) -> np.ndarray:
        """Monotone map that lowers forecasts below the threshold; intervals are then scaled around its output."""
        t = self.hypo_threshold_mg_dl
        return np.where(g_mg_dl < t, t - (1.0 + self.hypo_gain) * (t - g_mg_dl), g_mg_dl)

    def predict(self, posterior: Posterior, data: GlucoseData, origin_min: float,
                carbs_t_min: np.ndarray | None = None, carbs_g: np.ndarray | None = None,
                bolus_t_min: np.ndarray | None = None, bolus_u: np.ndarray | None = None,
                basal_changes: list[tuple[float, float, float]] | None = None) -> Prediction:
        """Glucose for 2 h after origin from data known at origin plus a scenario of planned carbs/boluses
        and temporary basal rates (start_min, end_min, rate_u_h).

        Planned events enter the effect series like recorded ones (the filter never sees CGM after origin).
        """
        known = data.until(origin_min)
        for start_min, end_min, rate_u_h in basal_changes or ():
            known = known.with_basal_change(start_min, end_min, rate_u_h)
        scenario = GlucoseData(
            known.t_min, known.glucose_mg_dl,
            np.r_[known.bolus_t_min, np.zeros(0) if bolus_t_min is None else bolus_t_min],
            np.r_[known.bolus_u, np.zeros(0) if bolus_u is None else bolus_u],
            known.basal_start_min, known.basal_end_min, known.basal_u_h,
            np.r_[known.carbs_t_min, np.zeros(0) if carbs_t_min is None else carbs_t_min],
            np.r_[known.carbs_g, np.zeros(0) if carbs_g is None else carbs_g],
        )
        fc = self.forecast_origins(posterior, scenario, np.array([origin_min]), keep_future=True)
        return Prediction(fc["t_min"][0], fc["mean"][0], fc["lo80"][0], fc["hi80"][0], fc["lo95"][0],
                          fc["hi95"][0], posterior.model_id, posterior.model_version, posterior.data_fingerprint,
                          {"sd_mg_dl": fc["sd"][0]})
