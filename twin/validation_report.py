"""Validation runs with reports (Markdown + HTML with plots): entry points for `fhirtwin twin validate`.

Glucose: calibrate on data before a split, forecast from many origins on the held-out days
(each origin sees only its past), score at 30/60/120 min beside the naive forecast (last value
carried forward). Vancomycin: a virtual TDM study drawn from the population model with known
parameters, comparing a-priori, Bayesian MAP and an oracle posterior-mean forecast.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twin import metrics
from twin.data import Covariates, DosingData, GlucoseData
from twin.models.glucose import GlucoseInsulinModel
from twin.models.vancomycin import Goti2018, VancomycinModel

HORIZONS_MIN = (30, 60, 120)


@dataclass
class Report:
    """Rows of the metric table (one dict per row), files written, and the headline numbers."""

    title: str
    rows: list[dict[str, object]]
    files: list[Path] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)

    def markdown_table(self) -> str:
        cols = list(self.rows[0])
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in self.rows]
        return "\n".join(lines)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "—" if np.isnan(v) else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _write(report: Report, out_dir: Path, intro: str, images: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {report.title}", "", intro, "", report.markdown_table(), ""] + [f"![{i}]({i})" for i in images]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in report.rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>"
                   for r in report.rows)
    imgs = "".join(f'<p><img src="{html.escape(i)}" style="max-width:900px"></p>' for i in images)
    (out_dir / "report.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
        f"<h1>{html.escape(report.title)}</h1><p>{html.escape(intro)}</p>"
        f"<table border='1' cellpadding='4'><tr>{head}</tr>{body}</table>{imgs}")
    report.files += [out_dir / "report.md", out_dir / "report.html"] + [out_dir / i for i in images]


def validate_glucose(data: GlucoseData, split_t_min: float, out_dir: str | Path | None = None,
                     fingerprint: str = "", origin_every_min: float = 15.0,
                     model: GlucoseInsulinModel | None = None) -> Report:
    """Fit on readings before split_t_min, forecast the rest, and report against the naive forecast."""
    model = model or GlucoseInsulinModel()
    post = model.calibrate(data.until(split_t_min - 1e-9), fingerprint)
    origins = np.arange(split_t_min, data.t_min[-1] - max(HORIZONS_MIN) + 1e-9, origin_every_min)
    origins = origins[np.isin(origins, data.t_min)]
    fc = model.forecast_origins(post, data, origins)
    now = np.interp(origins, data.t_min, data.glucose_mg_dl)
    rows: list[dict[str, object]] = []
    summary: dict[str, float] = {}
    for h in HORIZONS_MIN:
        obs = np.interp(origins + h, data.t_min, data.glucose_mg_dl)
        for name, pred, lo80, hi80, lo95, hi95 in (
            ("model", fc["mean"][:, h], fc["lo80"][:, h], fc["hi80"][:, h], fc["lo95"][:, h], fc["hi95"][:, h]),
            ("naive (last value)", now, None, None, None, None),
        ):
            z = metrics.zone_fractions(obs, pred)
            row = {"horizon_min": h, "forecast": name, "MARD_%": 100 * metrics.mard(pred, obs),
                   "RMSE_mg_dl": metrics.rmse(pred, obs), "Clarke_A_%": 100 * z["A"],
                   "Clarke_A+B_%": 100 * (z["A"] + z["B"]),
                   "TIR_pred_%": 100 * metrics.time_in_range(pred), "TIR_obs_%": 100 * metrics.time_in_range(obs),
                   "cover80_%": float("nan") if lo80 is None else 100 * metrics.coverage(obs, lo80, hi80),
                   "cover95_%": float("nan") if lo95 is None else 100 * metrics.coverage(obs, lo95, hi95)}
            rows.append(row)
            key = "model" if name == "model" else "naive"
            summary[f"{key}_mard_{h}"] = row["MARD_%"] / 100
            summary[f"{key}_ab_{h}"] = row["Clarke_A+B_%"] / 100
            if lo80 is not None:
                summary[f"cover80_{h}"] = row["cover80_%"] / 100
                summary[f"cover95_{h}"] = row["cover95_%"] / 100
    report = Report("Glucose twin validation", rows, summary=summary)
    report.summary["n_origins"] = float(len(origins))
    if out_dir is not None:
        out = Path(out_dir)
        _glucose_plots(data, origins, fc, out)
        intro = (f"Model {post.model_id} v{post.model_version} fitted on data before t = {split_t_min:.0f} min "
                 f"(fingerprint {fingerprint or '-'}); {len(origins)} forecast origins every {origin_every_min:g} min "
                 f"on the held-out data, each using only readings and events up to its origin. "
                 f"Estimates: {', '.join(f'{k}={v:.4g}' for k, v in post.estimates.items())}.")
        _write(report, out, intro, ["forecast_30min.png", "clarke_30min.png", "interval_calibration.png"])
    return report


def _glucose_plots(data: GlucoseData, origins: np.ndarray, fc: dict[str, np.ndarray], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    h = 30
    t = (origins + h) / 60.0
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.fill_between(t, fc["lo95"][:, h], fc["hi95"][:, h], color="C0", alpha=0.15, label="95% PI")
    ax.fill_between(t, fc["lo80"][:, h], fc["hi80"][:, h], color="C0", alpha=0.3, label="80% PI")
    ax.plot(t, fc["mean"][:, h], "C0", lw=1, label="30-min forecast")
    k = (data.t_min >= origins[0]) & (data.t_min <= origins[-1] + h)
    ax.plot(data.t_min[k] / 60, data.glucose_mg_dl[k], "k.", ms=2, label="CGM")
    ax.set(xlabel="time (h)", ylabel="glucose (mg/dL)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "forecast_30min.png", dpi=90)
    plt.close(fig)

    obs = np.interp(origins + h, data.t_min, data.glucose_mg_dl)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(obs, fc["mean"][:, h], s=4)
    x = np.array([0, 400])
    for line in ([0, 400], [0, 400 * 1.2], [0, 400 * 0.8]):
        ax.plot(x, line, "k", lw=0.5)
    ax.plot([70, 70], [0, 400], "k:", lw=0.5)
    ax.plot([0, 400], [180, 180], "k:", lw=0.5)
    ax.set(xlim=(0, 400), ylim=(0, 400), xlabel="observed CGM (mg/dL)", ylabel="30-min forecast (mg/dL)",
           title="Clarke error grid (A-zone lines)")
    fig.tight_layout()
    fig.savefig(out / "clarke_30min.png", dpi=90)
    plt.close(fig)

    hz = np.arange(5, fc["mean"].shape[1], 5)
    obs_h = np.interp(origins[:, None] + hz[None, :], data.t_min, data.glucose_mg_dl)
    c80 = np.mean((obs_h >= fc["lo80"][:, hz]) & (obs_h <= fc["hi80"][:, hz]), axis=0)
    c95 = np.mean((obs_h >= fc["lo95"][:, hz]) & (obs_h <= fc["hi95"][:, hz]), axis=0)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(hz, 100 * c80, "o-", label="80% PI")
    ax.plot(hz, 100 * c95, "s-", label="95% PI")
    ax.axhline(80, color="C0", ls=":")
    ax.axhline(95, color="C1", ls=":")
    ax.set(xlabel="horizon (min)", ylabel="empirical coverage (%)", ylim=(50, 100), title="Interval calibration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "interval_calibration.png", dpi=90)
    plt.close(fig)


def virtual_tdm_cohort(n_patients: int, seed: int, model: VancomycinModel
                       ) -> tuple[list[DosingData], np.ndarray, np.ndarray, np.ndarray]:
    """Virtual patients with known parameters: q12h infusions, a peak and a trough measured around dose 3–4.

    Returns the observed data (2 noisy levels each), the true parameters (N, p), the forecast times
    (N, 2: next peak and next trough) and the true noise-free concentrations there.
    """
    rng = np.random.default_rng(seed)
    pats, truths, times, conc = [], [], [], []
    for _ in range(n_patients):
        cov = Covariates(weight_kg=float(np.clip(rng.normal(78, 16), 45, 140)), age_y=float(rng.uniform(20, 85)),
                         sex=str(rng.choice(["male", "female"])),
                         creatinine_mg_dl=float(np.clip(rng.lognormal(np.log(1.0), 0.35), 0.4, 3.5)))
        dose = float(np.clip(np.round(15 * cov.weight_kg / 250) * 250, 750, 2000))
        tinf = max(1.0, np.ceil(dose / 1000))
        starts = 12.0 * np.arange(6)
        eta = rng.multivariate_normal(np.zeros(len(model.parameters)), model.omega)
        theta = model.typical(cov) * np.exp(eta)
        level_t = np.array([24.0 + tinf + 1.0, 36.0 - 0.5])
        target_t = np.array([48.0 + tinf + 1.0, 60.0 - 0.5])
        f = model.simulate(theta[None], starts, np.full(6, dose), np.full(6, tinf), np.r_[level_t, target_t])[0]
        y = np.maximum(f[:2] + rng.standard_normal(2) * model.residual_sd(f[:2]), 0.1)
        pats.append(DosingData(starts, np.full(6, dose), np.full(6, tinf), cov, level_t, y))
        truths.append(theta)
        times.append(target_t)
        conc.append(f[2:])
    return pats, np.array(truths), np.array(times), np.array(conc)


def oracle_forecast(model: VancomycinModel, data: DosingData, t_h: np.ndarray, n_draws: int, rng: np.random.Generator
                    ) -> np.ndarray:
    """Posterior-mean forecast under the true population model by importance sampling from the prior."""
    typ = model.typical(data.covariates)
    eta = rng.multivariate_normal(np.zeros(len(typ)), model.omega, size=n_draws)
    params = typ * np.exp(eta)
    f = model.simulate(params, data.dose_start_h, data.dose_mg, data.infusion_h, np.r_[data.level_t_h, t_h])
    fl = f[:, : len(data.level_t_h)]
    sd = model.residual_sd(fl)
    logw = -0.5 * np.sum(((data.level_mg_l - fl) / sd) ** 2 + 2 * np.log(sd), axis=1)
    w = np.exp(logw - logw.max())
    return (w[:, None] * f[:, len(data.level_t_h):]).sum(0) / w.sum()


def validate_vancomycin(n_patients: int = 200, seed: int = 1, out_dir: str | Path | None = None,
                        model: VancomycinModel | None = None, fit_model: VancomycinModel | None = None,
                        oracle_draws: int = 4000) -> Report:
    """Forecast the next peak and trough after two levels: a-priori vs MAP vs oracle, against the truth."""
    model = model or Goti2018()
    fit_model = fit_model or model
    pats, _, times, true = virtual_tdm_cohort(n_patients, seed, model)
    rng = np.random.default_rng(seed + 1)
    pred = {"a priori (population)": [], f"Bayesian MAP ({fit_model.model_id})": [], "oracle (true model)": []}
    for p, t in zip(pats, times, strict=True):
        prior = fit_model.prior(p.covariates, "")
        post = fit_model.calibrate(p, "")
        for key, ps in (("a priori (population)", prior), (f"Bayesian MAP ({fit_model.model_id})", post)):
            pred[key].append(fit_model.simulate(np.exp(ps.log_map)[None], p.dose_start_h, p.dose_mg,
                                                p.infusion_h, t)[0])
        pred["oracle (true model)"].append(oracle_forecast(model, p, t, oracle_draws, rng))
    rows, summary = [], {}
    for name, vals in pred.items():
        v = np.array(vals)
        for j, what in enumerate(("next peak", "next trough")):
            bias, rr = metrics.bias_rrmse(v[:, j], true[:, j])
            w20 = metrics.within(v[:, j], true[:, j], 0.2)
            rows.append({"forecast": name, "target": what, "within_20%_%": 100 * w20, "bias_%": 100 * bias,
                         "rRMSE_%": 100 * rr})
        summary[name] = metrics.within(v.ravel(), true.ravel(), 0.2)
    report = Report(f"Vancomycin TDM validation ({n_patients} virtual patients, truth from {model.model_id})",
                    rows, summary=summary)
    if out_dir is not None:
        intro = ("Each virtual patient: 6 doses q12h (15 mg/kg, 1 g/h), a peak 1 h after the 3rd infusion and a "
                 "trough 30 min before the 4th dose (with the published residual error); forecasts of the peak "
                 "after the 5th and the trough before the 6th dose are compared to the noise-free truth.")
        _vancomycin_plot({k: np.array(v) for k, v in pred.items()}, true, Path(out_dir))
        _write(report, Path(out_dir), intro, ["forecast_vs_truth.png"])
    return report


def _vancomycin_plot(pred: dict[str, np.ndarray], true: np.ndarray, out: Path) -> None:
    """Forecast vs true concentration for each forecaster, with the ±20% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(pred), figsize=(4.5 * len(pred), 4.5), sharey=True)
    top = float(np.nanmax(true)) * 1.3
    for ax, (name, values) in zip(np.atleast_1d(axes), pred.items(), strict=True):
        for j, (what, marker) in enumerate((("next peak", "o"), ("next trough", "s"))):
            ax.scatter(true[:, j], values[:, j], s=8, marker=marker, alpha=0.6, label=what)
        x = np.array([0.0, top])
        ax.plot(x, x, "k", lw=0.7)
        ax.fill_between(x, 0.8 * x, 1.2 * x, color="0.85", zorder=0, label="±20%")
        within = 100 * np.mean(np.abs(values - true) <= 0.2 * true)
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="true concentration (mg/L)", title=f"{name}\n{within:.0f}% within ±20%")
    np.atleast_1d(axes)[0].set_ylabel("forecast (mg/L)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "forecast_vs_truth.png", dpi=90)
    plt.close(fig)
