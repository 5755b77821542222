"""Bayesian MAP estimation with a Laplace approximation, from several starting points.

Why least squares: every objective here is a sum of squared standardized residuals
(data residuals / SD, and prior residuals L⁻¹(θ − μ) with Ω = L·Lᵀ), so the MAP is a
nonlinear least-squares problem and the Gauss–Newton Hessian JᵀJ at the optimum gives
the Laplace covariance without second derivatives. Local optimisers can stall at the
start values (minimal-model fits are notorious for it), hence the multi-start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares


@dataclass
class MapFit:
    """Result of a multi-start MAP fit in the optimiser's (log) space."""

    x: np.ndarray
    cov: np.ndarray
    cost: float
    n_data: int
    residual_sd: float
    n_starts: int
    n_converged: int


def fit_map(
    residuals: Callable[[np.ndarray], np.ndarray],
    starts: list[np.ndarray],
    prior_mean: np.ndarray | None = None,
    prior_cov: np.ndarray | None = None,
    estimate_scale: bool = False,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> MapFit:
    """Minimise ½‖r(x)‖² + ½‖L⁻¹(x − μ)‖² from every start; keep the best.

    `residuals` returns the data residuals already divided by their SD (or raw residuals
    when `estimate_scale` is set: then the SD is estimated as sqrt(RSS/(n − p)) and the
    covariance is scaled by its square, as in classical nonlinear regression).
    """
    if prior_cov is not None:
        chol_inv = np.linalg.inv(np.linalg.cholesky(prior_cov))

        def fun(x: np.ndarray) -> np.ndarray:
            return np.concatenate([residuals(x), chol_inv @ (x - prior_mean)])
    else:
        fun = residuals

    kw = {"bounds": bounds} if bounds is not None else {}
    fits = []
    for x0 in starts:
        try:
            fits.append(least_squares(fun, np.asarray(x0, float), method="trf", x_scale="jac", **kw))
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
    if not fits:
        raise RuntimeError("no starting point gave a finite objective")
    best = min(fits, key=lambda f: f.cost)
    n_conv = sum(1 for f in fits if f.cost <= best.cost * (1 + 1e-4) + 1e-9)
    jac = best.jac
    n_data = len(residuals(best.x))
    p = len(best.x)
    cov = np.linalg.pinv(jac.T @ jac)
    sd = 1.0
    if estimate_scale:
        rss = float(np.sum(residuals(best.x) ** 2))
        sd = float(np.sqrt(rss / max(n_data - p, 1)))
        cov = cov * sd**2
    return MapFit(best.x, cov, float(best.cost), n_data, sd, len(fits), n_conv)
