"""Vancomycin population PK models for therapeutic drug monitoring (Bayesian MAP dosing).

- Buelga DS et al. Antimicrob Agents Chemother 2005;49:4934 — one compartment:
  CL (L/h) = 1.08 × CLcr (Cockcroft–Gault, L/h); V = 0.98 L/kg × total body weight;
  IIV CV 28.2% (CL), 37.2% (V), correlation 0.23; additive residual SD 3.52 mg/L.
- Goti V et al. Ther Drug Monit 2018;40:212 — two compartments:
  CL = 4.5 L/h × (CrCL/120)^0.8 × 0.7^HD (CrCL capped at 150 mL/min); Vc = 58.4 L × (WT/70) × 0.5^HD;
  Vp = 38.4 L; Q = 6.5 L/h; IIV CV 39.8% CL, 81.6% Vc, 57.1% Vp (none on Q);
  residual 22.7% proportional + 3.4 mg/L additive. Vp is taken without weight scaling.

Individual parameters θi = θpop(covariates)·exp(ηi), η ~ N(0, Ω); the CVs above are read as
log-normal CVs (ω² = log(1 + CV²)). The MAP minimises Σ (y − f)²/Var(f) + ηᵀΩ⁻¹η with Var(f)
evaluated at the prediction (the usual TDM objective, without the log Var term).

Concentrations are exact: a linear compartment model's response to a zero-order infusion is a
sum of exponentials (eigen-decomposition of the rate matrix, batched over patients), and doses
superpose. Times in hours, doses in mg, concentrations in mg/L.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.calibration import fit_map
from twin.data import Covariates, DosingData
from twin.models.base import Parameter, Posterior, Prediction

AUC_TARGET_MG_H_L = (400.0, 600.0)


def cockcroft_gault_ml_min(c: Covariates) -> float:
    """Creatinine clearance (mL/min) from age, total body weight, serum creatinine and sex."""
    crcl = (140.0 - c.age_y) * c.weight_kg / (72.0 * c.creatinine_mg_dl)
    return crcl * (0.85 if c.sex == "female" else 1.0)


@dataclass(frozen=True)
class Regimen:
    """A dosing regimen with its predicted steady-state exposure (80%/95% intervals as (lo, hi))."""

    dose_mg: float
    interval_h: float
    infusion_h: float
    auc24_median_mg_h_l: float
    auc24_80: tuple[float, float]
    p_target: float
    p_above_target: float
    trough_median_mg_l: float
    trough_80: tuple[float, float]
    trough_95: tuple[float, float]
    peak_median_mg_l: float
    peak_80: tuple[float, float]
    peak_95: tuple[float, float]


class VancomycinModel:
    """Shared machinery; subclasses give parameters, covariate model, rate matrix and residual error."""

    model_id: str
    model_version = "1.0"
    parameters: tuple[Parameter, ...]
    correlation: np.ndarray
    prop_sd: float
    add_sd_mg_l: float

    # --- model-specific pieces -------------------------------------------------------------
    def typical(self, c: Covariates) -> np.ndarray:
        raise NotImplementedError

    def rate_matrix(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, n, n) rate matrices and (N,) central volumes from natural params (N, p)."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def omega(self) -> np.ndarray:
        sd = np.array([p.omega for p in self.parameters])
        return self.correlation * np.outer(sd, sd)

    def residual_sd(self, f_mg_l: np.ndarray) -> np.ndarray:
        return np.sqrt((self.prop_sd * f_mg_l) ** 2 + self.add_sd_mg_l**2)

    def simulate(self, params: np.ndarray, dose_start_h: np.ndarray, dose_mg: np.ndarray,
                 infusion_h: np.ndarray, t_h: np.ndarray) -> np.ndarray:
        """Central concentrations (N, T) for params (N, p); doses (N, D) or (D,); times (N, T) or (T,).

        Padding doses with dose_mg = 0 lets patients with different histories share one call.
        """
        params = np.atleast_2d(params)
        n = params.shape[0]
        start, amt, dur = (np.broadcast_to(np.atleast_1d(a), (n, np.shape(a)[-1] if np.ndim(a) else 1))
                           for a in (dose_start_h, dose_mg, infusion_h))
        t = np.broadcast_to(np.atleast_1d(t_h), (n, np.shape(t_h)[-1] if np.ndim(t_h) else 1))
        lam, w, vc = self.modes(params)
        tau = t[:, None, :] - start[:, :, None]  # (N, D, T)
        on = np.minimum(np.maximum(tau, 0.0), dur[:, :, None])
        lam_ = lam[:, None, None, :]
        after = np.maximum(tau, 0.0)[..., None]
        infusing = (dur > 0)[:, :, None, None]
        # Per mg given: an infusion's (e^(λτ) − e^(λ(τ−on)))/(λ·T); a push (T = 0) is its limit e^(λτ) once given.
        per_mg = np.where(infusing, (np.exp(lam_ * after) - np.exp(lam_ * (after - on[..., None])))
                          / (lam_ * np.where(infusing, dur[:, :, None, None], 1.0)),
                          np.where((tau >= 0)[..., None], np.exp(lam_ * after), 0.0))
        amount = np.einsum("ndtk,nk,nd->nt", per_mg, w, amt)
        return amount / vc[:, None]

    def modes(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eigenvalues (N, n), weight of each mode in the central amount (N, n), central volume (N,)."""
        a, vc = self.rate_matrix(np.atleast_2d(params))
        lam, vec = np.linalg.eig(a)
        lam, vec = lam.real, vec.real
        return lam, vec[:, 0, :] * np.linalg.inv(vec)[:, :, 0], vc

    def params_from_eta(self, typical: np.ndarray, eta: np.ndarray) -> np.ndarray:
        return typical * np.exp(eta)

    def calibrate(self, data: DosingData, fingerprint: str, n_starts: int = 3) -> Posterior:
        """Bayesian MAP of η from the measured levels and the dose history, Laplace covariance."""
        typ = self.typical(data.covariates)
        om = self.omega

        def residuals(eta: np.ndarray) -> np.ndarray:
            f = self.simulate(self.params_from_eta(typ, eta)[None, :], data.dose_start_h, data.dose_mg,
                              data.infusion_h, data.level_t_h)[0]
            return (data.level_mg_l - f) / self.residual_sd(f)

        sd = np.sqrt(np.diag(om))
        starts = [np.zeros(len(typ))] + [s * sd for s in (-1.0, 1.0, -0.5, 0.5)][: max(n_starts - 1, 0)]
        fit = fit_map(residuals, starts, prior_mean=np.zeros(len(typ)), prior_cov=om)
        return Posterior(self.model_id, self.model_version, fingerprint, self.names, np.log(typ) + fit.x,
                         fit.cov, float("nan"), fit.cost, fit.n_starts, fit.n_converged,
                         {"eta": fit.x, "n_levels": int(len(data.level_t_h))})

    def prior(self, c: Covariates, fingerprint: str) -> Posterior:
        """The a-priori (population) posterior: typical values and Ω, no levels used."""
        typ = self.typical(c)
        return Posterior(self.model_id, self.model_version, fingerprint, self.names, np.log(typ), self.omega,
                         float("nan"), 0.0, 0, 0, {"eta": np.zeros(len(typ)), "n_levels": 0})

    def predict(self, posterior: Posterior, scenario: DosingData, t_h: np.ndarray, n_draws: int = 2000,
                seed: int = 0) -> Prediction:
        """Concentrations at t_h for history + planned doses, with intervals from parameter and residual error."""
        rng = np.random.default_rng(seed)
        draws = np.exp(posterior.sample_log(n_draws, rng))
        f = self.simulate(draws, scenario.dose_start_h, scenario.dose_mg, scenario.infusion_h, t_h)
        y = np.maximum(f + rng.standard_normal(f.shape) * self.residual_sd(f), 0.0)
        typical_f = self.simulate(np.exp(posterior.log_map)[None, :], scenario.dose_start_h, scenario.dose_mg,
                                  scenario.infusion_h, t_h)[0]
        return Prediction.from_samples(np.asarray(t_h, float), y, posterior, map_mg_l=typical_f)

    def steady_state(self, params: np.ndarray, dose_mg: np.ndarray, interval_h: np.ndarray,
                     infusion_h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Trough, peak (end of infusion) and AUC24 at steady state; arrays broadcast to (N,).

        Summing the geometric series of past doses per mode: peak = R·Σ w(e^(λT) − 1)/λ/(1 − e^(λτ)),
        trough = the same with an extra e^(λ(τ − T)); AUC over an interval at steady state = dose/CL.
        """
        params = np.atleast_2d(params)
        dose, tau, tinf = (np.broadcast_to(np.asarray(a, float), (params.shape[0],))[:, None] for a in
                           (dose_mg, interval_h, infusion_h))
        lam, w, vc = self.modes(params)
        per_mode = (dose / tinf) * w * np.expm1(lam * tinf) / lam / -np.expm1(lam * tau)
        peak = per_mode.sum(1) / vc
        trough = (per_mode * np.exp(lam * (tau - tinf))).sum(1) / vc
        return trough, peak, dose[:, 0] * 24.0 / tau[:, 0] / params[:, 0]

    def recommend(self, posterior: Posterior, doses_mg: np.ndarray | None = None,
                  intervals_h: tuple[float, ...] = (8.0, 12.0, 24.0, 36.0, 48.0), n_draws: int = 1000,
                  seed: int = 0) -> list[Regimen]:
        """Regimens ranked by P(400 ≤ AUC24 ≤ 600), then by the lowest P(AUC24 > 600).

        Infusion time follows the usual rate limit of 1 g/h (at least 1 h).
        """
        doses = np.arange(250.0, 3001.0, 250.0) if doses_mg is None else np.asarray(doses_mg, float)
        grid = np.array([(d, tau) for d in doses for tau in intervals_h])
        tinf = np.maximum(1.0, np.ceil(grid[:, 0] / 500.0) / 2.0)
        rng = np.random.default_rng(seed)
        draws = np.exp(posterior.sample_log(n_draws, rng))
        m, k = len(grid), n_draws
        p = np.repeat(draws[None], m, 0).reshape(m * k, -1)
        trough, peak, auc = (a.reshape(m, k) for a in self.steady_state(
            p, np.repeat(grid[:, 0], k), np.repeat(grid[:, 1], k), np.repeat(tinf, k)))
        lo, hi = AUC_TARGET_MG_H_L
        p_in = np.mean((auc >= lo) & (auc <= hi), axis=1)
        p_above = np.mean(auc > hi, axis=1)
        order = np.lexsort((p_above, -np.round(p_in, 3)))

        def q(a: np.ndarray, i: int, lo_q: float, hi_q: float) -> tuple[float, float]:
            return (float(np.quantile(a[i], lo_q)), float(np.quantile(a[i], hi_q)))

        return [Regimen(float(grid[i, 0]), float(grid[i, 1]), float(tinf[i]), float(np.median(auc[i])),
                        q(auc, i, 0.1, 0.9), float(p_in[i]), float(p_above[i]),
                        float(np.median(trough[i])), q(trough, i, 0.1, 0.9), q(trough, i, 0.025, 0.975),
                        float(np.median(peak[i])), q(peak, i, 0.1, 0.9), q(peak, i, 0.025, 0.975))
                for i in order]


class Buelga2005(VancomycinModel):
    """One-compartment model of Buelga 2005 (CLcr by Cockcroft–Gault)."""

    model_id = "vancomycin-buelga-2005"
    parameters = (Parameter("cl_l_h", 1.0, 0.282), Parameter("v_l", 1.0, 0.372))
    correlation = np.array([[1.0, 0.23], [0.23, 1.0]])
    prop_sd = 0.0
    add_sd_mg_l = 3.52

    def typical(self, c: Covariates) -> np.ndarray:
        return np.array([1.08 * cockcroft_gault_ml_min(c) * 0.06, 0.98 * c.weight_kg])

    def rate_matrix(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (-(params[:, 0] / params[:, 1]))[:, None, None], params[:, 1]


class Goti2018(VancomycinModel):
    """Two-compartment model of Goti 2018 (CrCL capped at 150 mL/min, haemodialysis effects)."""

    model_id = "vancomycin-goti-2018"
    parameters = (Parameter("cl_l_h", 1.0, 0.398), Parameter("vc_l", 1.0, 0.816), Parameter("vp_l", 1.0, 0.571))
    correlation = np.eye(3)
    prop_sd = 0.227
    add_sd_mg_l = 3.4
    q_l_h = 6.5

    def typical(self, c: Covariates) -> np.ndarray:
        crcl = min(cockcroft_gault_ml_min(c), 150.0)
        hd = 1.0 if c.dialysis else 0.0
        return np.array([4.5 * (crcl / 120.0) ** 0.8 * 0.7**hd, 58.4 * (c.weight_kg / 70.0) * 0.5**hd, 38.4])

    def rate_matrix(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cl, vc, vp = params[:, 0], params[:, 1], params[:, 2]
        k10, k12, k21 = cl / vc, self.q_l_h / vc, self.q_l_h / vp
        a = np.empty((len(cl), 2, 2))
        a[:, 0, 0], a[:, 0, 1] = -(k10 + k12), k21
        a[:, 1, 0], a[:, 1, 1] = k12, -k21
        return a, vc
