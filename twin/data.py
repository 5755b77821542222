"""Plain numpy containers for model inputs.

Why: models must not know where data came from (FHIR views, HL7v2, CSV). The store side
fills these containers; the models only see arrays with units in their names.
Times are minutes (glucose) or hours (drug dosing) from an arbitrary origin chosen by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


def _f(a: object) -> np.ndarray:
    return np.atleast_1d(np.asarray(a, dtype=float))


@dataclass(frozen=True)
class GlucoseData:
    """One patient's CGM series with insulin and carbohydrate events.

    Basal insulin is a list of periods [start, end) with a rate in U/h; boluses are
    instantaneous (U at a time); carbohydrates are grams eaten at a time.
    """

    t_min: np.ndarray
    glucose_mg_dl: np.ndarray
    bolus_t_min: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bolus_u: np.ndarray = field(default_factory=lambda: np.zeros(0))
    basal_start_min: np.ndarray = field(default_factory=lambda: np.zeros(0))
    basal_end_min: np.ndarray = field(default_factory=lambda: np.zeros(0))
    basal_u_h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    carbs_t_min: np.ndarray = field(default_factory=lambda: np.zeros(0))
    carbs_g: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            object.__setattr__(self, name, _f(getattr(self, name)))
        order = np.argsort(self.t_min, kind="stable")
        object.__setattr__(self, "t_min", self.t_min[order])
        object.__setattr__(self, "glucose_mg_dl", self.glucose_mg_dl[order])

    def until(self, t_max_min: float) -> GlucoseData:
        """What was known at t_max_min: readings and events at or before it; a basal period that had started keeps its planned end."""
        k = self.t_min <= t_max_min
        b = self.bolus_t_min <= t_max_min
        c = self.carbs_t_min <= t_max_min
        p = self.basal_start_min <= t_max_min
        return replace(
            self, t_min=self.t_min[k], glucose_mg_dl=self.glucose_mg_dl[k],
            bolus_t_min=self.bolus_t_min[b], bolus_u=self.bolus_u[b],
            carbs_t_min=self.carbs_t_min[c], carbs_g=self.carbs_g[c],
            basal_start_min=self.basal_start_min[p], basal_end_min=self.basal_end_min[p],
            basal_u_h=self.basal_u_h[p],
        )

    def with_basal_change(self, start_min: float, end_min: float, rate_u_h: float) -> GlucoseData:
        """A temporary basal rate over [start, end): overlapping programmed periods are cut around it."""
        starts, ends, rates = [], [], []
        for s, e, r in zip(self.basal_start_min, self.basal_end_min, self.basal_u_h, strict=True):
            if s < start_min:
                starts.append(s)
                ends.append(min(e, start_min))
                rates.append(r)
            if e > end_min:
                starts.append(max(s, end_min))
                ends.append(e)
                rates.append(r)
        starts.append(start_min)
        ends.append(end_min)
        rates.append(rate_u_h)
        order = np.argsort(starts, kind="stable")
        return replace(self, basal_start_min=np.asarray(starts)[order], basal_end_min=np.asarray(ends)[order],
                       basal_u_h=np.asarray(rates)[order])

    def readings_between(self, t0_min: float, t1_min: float) -> GlucoseData:
        """Same events, readings restricted to [t0, t1) (used to score held-out days)."""
        k = (self.t_min >= t0_min) & (self.t_min < t1_min)
        return replace(self, t_min=self.t_min[k], glucose_mg_dl=self.glucose_mg_dl[k])


@dataclass(frozen=True)
class Covariates:
    """Patient covariates used by dosing models (creatinine in mg/dL, as Cockcroft–Gault wants)."""

    weight_kg: float
    age_y: float
    sex: str  # "male" | "female" (FHIR administrative gender)
    creatinine_mg_dl: float
    dialysis: bool = False


@dataclass(frozen=True)
class DosingData:
    """Infusions (mg over h from a start in h) and measured levels (mg/L at h) of one patient."""

    dose_start_h: np.ndarray
    dose_mg: np.ndarray
    infusion_h: np.ndarray
    covariates: Covariates
    level_t_h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    level_mg_l: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        for name in ("dose_start_h", "dose_mg", "infusion_h", "level_t_h", "level_mg_l"):
            object.__setattr__(self, name, _f(getattr(self, name)))

    def until(self, t_max_h: float) -> DosingData:
        """Doses started and levels measured at or before t_max_h."""
        d = self.dose_start_h <= t_max_h
        k = self.level_t_h <= t_max_h
        return replace(self, dose_start_h=self.dose_start_h[d], dose_mg=self.dose_mg[d],
                       infusion_h=self.infusion_h[d], level_t_h=self.level_t_h[k],
                       level_mg_l=self.level_mg_l[k])

    def with_doses(self, start_h: np.ndarray, dose_mg: np.ndarray, infusion_h: np.ndarray) -> DosingData:
        """Add planned doses (a scenario) to the history."""
        return replace(self, dose_start_h=np.r_[self.dose_start_h, _f(start_h)],
                       dose_mg=np.r_[self.dose_mg, _f(dose_mg)],
                       infusion_h=np.r_[self.infusion_h, _f(infusion_h)])


def read_raw_cgm_csv(path: str) -> tuple[GlucoseData, np.ndarray]:
    """Read a fixtures/cgm/raw/*.csv.gz table (5-min grid) into GlucoseData plus the noise-free glucose.

    The fixture's basal is one programmed rate for the whole record.
    """
    import gzip

    with gzip.open(path, "rt") as fh:
        header = fh.readline().strip().split(",")
        a = np.loadtxt(fh, delimiter=",", ndmin=2)
    col = {name: a[:, i] for i, name in enumerate(header)}
    t = col["t_min"]
    b, c = col["bolus_u"] > 0, col["carbs_g"] > 0
    data = GlucoseData(t, col["cgm_mg_dl"], t[b], col["bolus_u"][b], [t[0]], [t[-1] + 5.0], [col["basal_u_h"][0]],
                       t[c], col["carbs_g"][c])
    return data, col["bg_true_mg_dl"]
