"""The minimal-model fit recovers the published MINMOD estimates for the Pacini–Bergman IVGTT."""

import csv
from pathlib import Path

import numpy as np

from twin.models.bergman import BergmanMinimalModel, IvgttData

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "twin" / "ivgtt_pacini_bergman_1986.csv"


def load() -> IvgttData:
    rows = [r for r in csv.reader(line for line in DATA.open() if not line.startswith("#"))][1:]
    a = np.array(rows, float)
    return IvgttData(a[:, 0], a[:, 1], a[:, 2])


def test_ivgtt_fit_recovers_published_estimates_and_identifiability() -> None:
    post = BergmanMinimalModel().calibrate(load(), fingerprint="pacini-bergman-1986")
    est, cv = post.estimates, post.cv
    assert abs(est["sg_per_min"] - 0.019) < 0.004
    assert abs(est["p2_per_min"] - 0.022) < 0.005
    assert abs(est["si_per_min_per_uu_ml"] - 8.1e-4) < 0.8e-4
    assert abs(est["g0_mg_dl"] - 261) < 8
    assert 3.0 < post.residual_sd < 5.0
    assert 0.04 < cv["si_per_min_per_uu_ml"] < 0.12
    assert cv["sg_per_min"] > 0.4 and cv["p2_per_min"] > 0.4
    ident = post.identifiability()
    assert set(ident["poorly_identified"]) >= {"sg_per_min", "p2_per_min"}
    assert "si_per_min_per_uu_ml" not in ident["poorly_identified"]
    assert post.data_fingerprint == "pacini-bergman-1986" and post.model_id == "bergman-minimal-ivgtt"
