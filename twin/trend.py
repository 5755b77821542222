"""Bayesian linear trend: the slow twin for yearly labs and vitals (HbA1c, blood pressure).

Synthetic and real records carry such measures about once a year, far too
sparse for a mechanistic model, but a per-patient trend with an honest
predictive interval is still useful ("where is this HbA1c heading?"). The model
is conjugate (Normal-Inverse-Gamma), so the posterior and the Student-t
predictive are exact and cheap; the prior is centred on no change so that a
patient with two points does not get a wild slope.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

MODEL_ID = "bayesian-linear-trend"
MODEL_VERSION = "1.0.0"


@dataclass(frozen=True)
class TrendPrior:
    """Prior in the measure's own units; slope per year, noise as an inverse-gamma on variance."""

    level_sd: float
    slope_sd_per_year: float
    noise_sd: float
    noise_strength: float = 2.0  # pseudo-observations backing noise_sd


@dataclass(frozen=True)
class TrendFit:
    """Posterior of (level at the last observation, slope per year) and noise variance."""

    mean: np.ndarray  # [level, slope_per_year]
    cov_unscaled: np.ndarray  # posterior covariance divided by sigma^2
    a: float  # inverse-gamma shape
    b: float  # inverse-gamma scale
    t_ref_years: float  # time origin of the level (last observation), in years since epoch
    n: int

    @property
    def slope_per_year(self) -> float:
        return float(self.mean[1])

    @property
    def slope_sd_per_year(self) -> float:
        return float(np.sqrt(self.cov_unscaled[1, 1] * self.b / max(self.a - 1.0, 1e-9)))

    def predict(self, t_years: np.ndarray, levels: tuple[float, ...] = (0.8, 0.95)) -> dict[str, np.ndarray]:
        """Predictive mean and central intervals for new measurements at ``t_years``."""
        x = np.column_stack([np.ones_like(t_years), t_years - self.t_ref_years])
        mean = x @ self.mean
        scale2 = (self.b / self.a) * (1.0 + np.einsum("ij,jk,ik->i", x, self.cov_unscaled, x))
        dist = stats.t(df=2 * self.a, loc=mean, scale=np.sqrt(scale2))
        out = {"mean": mean}
        for level in levels:
            lo, hi = dist.interval(level)
            out[f"low_{round(level * 100)}"] = lo
            out[f"high_{round(level * 100)}"] = hi
        return out


class BayesianTrend:
    """Per-patient linear trend of one measure over time."""

    model_id = MODEL_ID
    version = MODEL_VERSION

    def __init__(self, prior: TrendPrior) -> None:
        self.prior = prior

    def fit(self, t_years: np.ndarray, values: np.ndarray) -> TrendFit:
        """Exact conjugate posterior given measurement times (years) and values."""
        if t_years.size == 0:
            raise ValueError("no data to fit")
        t_ref = float(t_years.max())
        x = np.column_stack([np.ones_like(t_years), t_years - t_ref])
        # Prior centred on the last value with no slope; covariance scaled by the noise variance.
        m0 = np.array([float(values[np.argmax(t_years)]), 0.0])
        s2 = self.prior.noise_sd**2
        v0 = np.diag([self.prior.level_sd**2 / s2, self.prior.slope_sd_per_year**2 / s2])
        v0_inv = np.linalg.inv(v0)
        vn_inv = v0_inv + x.T @ x
        vn = np.linalg.inv(vn_inv)
        mn = vn @ (v0_inv @ m0 + x.T @ values)
        a0 = self.prior.noise_strength / 2.0
        b0 = a0 * s2
        an = a0 + values.size / 2.0
        bn = b0 + 0.5 * float(values @ values + m0 @ v0_inv @ m0 - mn @ vn_inv @ mn)
        return TrendFit(mean=mn, cov_unscaled=vn, a=an, b=max(bn, 1e-12), t_ref_years=t_ref, n=int(values.size))
