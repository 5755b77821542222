"""Validation metrics for the twins: glucose forecast accuracy, Clarke zones, coverage, PK bias.

Why one module: the report, the tests and the benchmark must compute the same numbers the same way.
"""

from __future__ import annotations

import numpy as np


def mard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean absolute relative difference, as a fraction (0.09 = 9%)."""
    return float(np.mean(np.abs(pred - ref) / ref))


def rmse(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - ref) ** 2)))


def clarke_zones(ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Clarke error grid zone ('A'…'E') of each (reference, prediction) pair in mg/dL (Clarke 1987)."""
    ref, pred = np.asarray(ref, float), np.asarray(pred, float)
    a = ((ref <= 70) & (pred <= 70)) | ((pred <= 1.2 * ref) & (pred >= 0.8 * ref))
    e = ((ref >= 180) & (pred <= 70)) | ((ref <= 70) & (pred >= 180))
    c = (((ref >= 70) & (ref <= 290)) & (pred >= ref + 110)) | (
        ((ref >= 130) & (ref <= 180)) & (pred <= (7 / 5) * ref - 182))
    d = ((ref >= 240) & (pred >= 70) & (pred <= 180)) | ((ref <= 175 / 3) & (pred <= 180) & (pred >= 70)) | (
        (ref >= 175 / 3) & (ref <= 70) & (pred >= (6 / 5) * ref))
    return np.select([a, e, c, d], ["A", "E", "C", "D"], default="B")


def zone_fractions(ref: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    z = clarke_zones(ref, pred)
    return {k: float(np.mean(z == k)) for k in "ABCDE"}


def time_in_range(glucose_mg_dl: np.ndarray, lo: float = 70.0, hi: float = 180.0) -> float:
    g = np.asarray(glucose_mg_dl)
    return float(np.mean((g >= lo) & (g <= hi)))


def coverage(obs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Fraction of observations inside their prediction interval."""
    return float(np.mean((obs >= lo) & (obs <= hi)))


def bias_rrmse(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Mean relative bias and relative RMSE (fractions) of predictions against true values."""
    rel = (np.asarray(pred) - true) / true
    return float(np.mean(rel)), float(np.sqrt(np.mean(rel**2)))


def within(pred: np.ndarray, true: np.ndarray, fraction: float = 0.2) -> float:
    """Share of predictions within ±fraction of the true value."""
    return float(np.mean(np.abs(np.asarray(pred) - true) <= fraction * np.abs(true)))
