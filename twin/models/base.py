"""Framework types shared by every twin model: parameters, posteriors, predictions.

Why: a published number must say which model and version produced it, from which data
(a fingerprint chosen by the caller, e.g. a hash of resource versions) and how uncertain it is.
Parameters are estimated on the log scale (all are positive rates, volumes or times), so
priors are log-normal and the Laplace approximation is a Gaussian in log space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Parameter:
    """A positive model parameter (unit in the name) with a log-normal prior: median and CV."""

    name: str
    typical: float
    cv: float

    @property
    def omega(self) -> float:
        """SD of log(parameter) equivalent to the CV of a log-normal."""
        return float(np.sqrt(np.log1p(self.cv**2)))


@dataclass
class Posterior:
    """Laplace posterior of log-parameters: MAP and covariance, plus its provenance."""

    model_id: str
    model_version: str
    data_fingerprint: str
    names: tuple[str, ...]
    log_map: np.ndarray
    log_cov: np.ndarray
    residual_sd: float
    cost: float
    n_starts: int
    n_converged: int
    extra: dict = field(default_factory=dict)

    @property
    def estimates(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, np.exp(self.log_map), strict=True)}

    @property
    def cv(self) -> dict[str, float]:
        """CV of each parameter from the log-normal approximation (sqrt(exp(var) - 1))."""
        return {n: float(np.sqrt(np.expm1(v))) for n, v in zip(self.names, np.diag(self.log_cov), strict=True)}

    @property
    def correlation(self) -> np.ndarray:
        sd = np.sqrt(np.diag(self.log_cov))
        return self.log_cov / np.outer(sd, sd)

    def identifiability(self, cv_limit: float = 0.4) -> dict:
        """Which parameters the data pin down: CV, correlation matrix, and flags."""
        corr = self.correlation
        pairs = [(self.names[i], self.names[j], float(corr[i, j]))
                 for i in range(len(self.names)) for j in range(i + 1, len(self.names)) if abs(corr[i, j]) > 0.9]
        return {
            "cv": self.cv,
            "correlation": corr.tolist(),
            "poorly_identified": [n for n, c in self.cv.items() if c > cv_limit],
            "highly_correlated": pairs,
            "starts": self.n_starts,
            "starts_converged_to_map": self.n_converged,
        }

    def sample_log(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draws of log-parameters, shape (n, p)."""
        return rng.multivariate_normal(self.log_map, self.log_cov, size=n, method="cholesky")

    def summary(self) -> dict:
        return {
            "model": self.model_id, "version": self.model_version, "data": self.data_fingerprint,
            "estimates": self.estimates, "cv": self.cv, "residual_sd": self.residual_sd,
        }


@dataclass
class Prediction:
    """Predicted values with 80% and 95% prediction intervals (shape (..., n_times))."""

    t: np.ndarray
    median: np.ndarray
    lo80: np.ndarray
    hi80: np.ndarray
    lo95: np.ndarray
    hi95: np.ndarray
    model_id: str
    model_version: str
    data_fingerprint: str
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_samples(cls, t: np.ndarray, samples: np.ndarray, posterior: Posterior, **extra: object) -> Prediction:
        """Quantiles over the leading (draw) axis."""
        q = np.quantile(samples, [0.5, 0.1, 0.9, 0.025, 0.975], axis=0)
        return cls(t, q[0], q[1], q[2], q[3], q[4], posterior.model_id, posterior.model_version,
                   posterior.data_fingerprint, dict(extra))
