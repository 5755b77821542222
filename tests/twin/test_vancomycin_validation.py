"""Validation on virtual patients drawn from the population model (known truth, published residual error)."""

from twin.validation_report import validate_vancomycin


def test_map_forecast_matches_oracle_and_beats_population_prior(tmp_path) -> None:
    report = validate_vancomycin(n_patients=200, seed=1, out_dir=tmp_path, oracle_draws=1000)
    s = report.summary
    map_key = "Bayesian MAP (vancomycin-goti-2018)"
    assert abs(s[map_key] - s["oracle (true model)"]) <= 0.05
    assert s[map_key] - s["a priori (population)"] >= 0.15
    assert (tmp_path / "report.md").read_text().count("next trough") == 3
