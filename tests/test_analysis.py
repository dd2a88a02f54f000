"""Claim checks on synthetic points with a known answer: the temperature fit and group comparisons."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from distill_lab.analysis import INTERIOR, compare_groups, detectable_difference, fit_temperature

TEMPERATURES = [1, 2, 3, 4, 6, 8, 12, 16, 24]  # the temperature_convexity grid
SEEDS = 3
NOISE = 0.003  # seed-to-seed std of dev F1 (0.3 F1 points)


def points(score, *, noise: float = NOISE, seed: int = 0, temperatures=TEMPERATURES, seeds: int = SEEDS):
    rng = np.random.default_rng(seed)
    temps = [t for t in temperatures for _ in range(seeds)]
    return temps, [score(t) + rng.normal(0.0, noise) for t in temps]


def concave(t_star: float, peak: float = 0.85, curvature: float = 0.02):
    return lambda t: peak - curvature * (math.log(t) - math.log(t_star)) ** 2


def test_interior_optimum_is_recovered_with_its_ci():
    temps, scores = points(concave(5.0))
    fit = fit_temperature(temps, scores)
    assert fit.verdict == INTERIOR
    assert fit.t_star is not None and fit.t_star_ci is not None
    assert fit.t_star_ci[0] <= 5.0 <= fit.t_star_ci[1]
    assert fit.t_star == pytest.approx(5.0, rel=0.25)
    assert fit.t_star_ci[0] <= fit.t_star <= fit.t_star_ci[1]
    assert fit.curvature_ci[1] < 0
    # Per-temperature summaries are the seed means/stds of the input.
    frame = pd.DataFrame({"T": temps, "score": scores}).groupby("T")["score"]
    assert fit.temperatures == TEMPERATURES
    assert fit.means == pytest.approx(list(frame.mean()))
    assert fit.stds == pytest.approx(list(frame.std()))
    assert fit.counts == [SEEDS] * len(TEMPERATURES)
    assert fit.points == len(TEMPERATURES) * SEEDS
    assert set(fit.as_dict()) >= {"t_star", "t_star_ci", "verdict", "curvature_ci", "coefficients"}


@pytest.mark.parametrize("seed", range(5))
def test_interior_verdict_is_stable_across_noise_draws(seed):
    fit = fit_temperature(*points(concave(5.0), seed=seed), n_bootstrap=1000)
    assert fit.verdict == INTERIOR
    assert fit.t_star_ci[0] < 5.0 < fit.t_star_ci[1] or abs(math.log(fit.t_star / 5.0)) < 0.2


@pytest.mark.parametrize(("slope", "verdict"), [(0.01, "monotone (increasing)"), (-0.01, "monotone (decreasing)")])
def test_monotone(slope, verdict):
    fit = fit_temperature(*points(lambda t: 0.82 + slope * math.log(t), seed=3))
    assert fit.verdict == verdict
    assert (fit.slope_ci[0] > 0) if slope > 0 else (fit.slope_ci[1] < 0)


def test_flat():
    fit = fit_temperature(*points(lambda t: 0.85, seed=0))
    assert fit.verdict == "flat"
    assert fit.curvature_ci[0] <= 0 <= fit.curvature_ci[1]
    assert fit.slope_ci[0] <= 0 <= fit.slope_ci[1]
    # Any one draw of pure noise may look like a trend (a 95% check errs 1 time in 20): most must not.
    verdicts = [fit_temperature(*points(lambda t: 0.85, seed=s), n_bootstrap=500).verdict for s in range(20)]
    assert verdicts.count("flat") >= 15


@pytest.mark.parametrize("t_star", [60.0, 0.3])
def test_optimum_beyond_the_range_is_at_the_edge(t_star):
    fit = fit_temperature(*points(concave(t_star), seed=2))
    assert fit.verdict == "optimum at the edge"
    assert fit.t_star is not None and not (min(TEMPERATURES) < fit.t_star < max(TEMPERATURES))


def test_optimum_whose_ci_leaves_the_range_is_not_called_interior():
    # Vertex inside the range, but too close to its end for 3 noisy seeds to pin it inside.
    fit = fit_temperature(*points(concave(16.0, curvature=0.005), seed=0))
    assert fit.t_star is not None and min(TEMPERATURES) < fit.t_star < max(TEMPERATURES)
    assert fit.t_star_ci[1] > max(TEMPERATURES)
    assert fit.curvature_ci[1] < 0
    assert fit.verdict == "inconclusive"
    assert "reaches past the searched range" in fit.detail


def test_pure_noise_rarely_supports_an_interior_optimum():
    # A 95% claim check must not find an optimum in noise much more often than 1 time in 20.
    # (Resampling each temperature's own 3 seeds did, ~10% of the time: intervals far too narrow.)
    draws = 60
    verdicts = [fit_temperature(*points(lambda t: 0.85, seed=100 + i), n_bootstrap=500).verdict for i in range(draws)]
    assert verdicts.count(INTERIOR) <= 3
    assert sum(v.startswith("monotone") for v in verdicts) <= 6


@pytest.mark.parametrize("temps", [[4, 4, 4], [2, 2, 4, 4, 4], []])
def test_fewer_than_three_temperatures_is_an_error(temps):
    with pytest.raises(ValueError, match="at least 3 distinct temperatures"):
        fit_temperature(temps, [0.8] * len(temps))


def test_non_positive_temperature_is_an_error():
    with pytest.raises(ValueError, match="> 0"):
        fit_temperature([0, 1, 2], [0.8, 0.8, 0.8])


def test_deterministic_for_a_seed():
    temps, scores = points(concave(5.0))
    assert fit_temperature(temps, scores, seed=7).as_dict() == fit_temperature(temps, scores, seed=7).as_dict()


# --------------------------------------------------------------------------- group comparisons
def groups_frame():
    values = {
        "uniform": [0.850, 0.853, 0.847],
        "many_to_one": [0.849, 0.852, 0.846],  # within noise of uniform
        "last": [0.800, 0.803, 0.797],  # clearly worse
    }
    return pd.DataFrame([{"mapping": name, "dev_f1": v} for name, vs in values.items() for v in vs]), values


def test_compare_groups_means_stds_and_noise_flags():
    frame, values = groups_frame()
    comparison = compare_groups(frame, "mapping", reference="uniform")
    assert comparison.reference == "uniform" and comparison.factor == "mapping"
    rows = {row["mapping"]: row for row in comparison.rows}
    for name, vs in values.items():
        assert rows[name]["n"] == 3
        assert rows[name]["mean"] == pytest.approx(np.mean(vs))
        assert rows[name]["std"] == pytest.approx(np.std(vs, ddof=1))
        assert rows[name]["diff_vs_uniform"] == pytest.approx(np.mean(vs) - np.mean(values["uniform"]))
        assert rows[name]["ci_low"] <= rows[name]["diff_vs_uniform"] <= rows[name]["ci_high"]
    assert rows["uniform"]["within_noise"] is True
    assert rows["many_to_one"]["within_noise"] is True
    assert rows["last"]["within_noise"] is False
    assert rows["last"]["ci_high"] < 0
    # Rows best first; as_frame carries the same numbers.
    assert [row["mapping"] for row in comparison.rows] == ["uniform", "many_to_one", "last"]
    frame_view = comparison.as_frame()
    assert list(frame_view["mapping"]) == ["uniform", "many_to_one", "last"]
    assert {"n", "mean", "std", "diff_vs_uniform", "ci_low", "ci_high", "within_noise"} <= set(frame_view)


def test_compare_groups_reference_defaults_to_the_best():
    frame, _ = groups_frame()
    comparison = compare_groups(frame, "mapping", reference="not-a-group")
    assert comparison.reference == "uniform"
    assert "diff_vs_uniform" in comparison.rows[0]


def test_compare_groups_equal_groups_are_mostly_within_noise():
    # Same mean, 3 seeds each: "not within noise" should be rare (nominal 5%), not ~20%.
    rng = np.random.default_rng(0)
    flagged = 0
    for i in range(40):
        frame = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 3 + ["c"] * 3, "dev_f1": rng.normal(0.85, 0.003, 9)})
        flagged += sum(not row["within_noise"] for row in compare_groups(frame, "g", reference="a",
                                                                          n_bootstrap=500, seed=i).rows)
    assert flagged <= 8  # of 80 comparisons


def test_compare_groups_empty_is_an_error():
    with pytest.raises(ValueError):
        compare_groups(pd.DataFrame({"mapping": [], "dev_f1": []}), "mapping")


def test_compare_groups_with_one_seed_per_group_gives_no_interval_and_no_verdict():
    frame = pd.DataFrame({"mapping": ["a", "b", "c"], "dev_f1": [0.72, 0.70, 0.67]})
    rows = {row["mapping"]: row for row in compare_groups(frame, "mapping", reference="a").rows}
    assert rows["b"]["diff_vs_a"] == pytest.approx(-0.02)
    assert all(np.isnan(row["ci_low"]) and np.isnan(row["ci_high"]) for row in rows.values())
    assert all(row["within_noise"] is None for row in rows.values())


def test_detectable_difference_is_welch_power_arithmetic():
    # Both arms std 1 over 3 seeds: se = sqrt(2/3), Welch df = 4, (t_.975 + t_.8)(4) = 2.7764 + 0.9410.
    values = np.array([1.0, 2.0, 3.0])
    assert detectable_difference(values, values + 5) == pytest.approx((2.776445 + 0.940965) * (2 / 3) ** 0.5, rel=1e-5)
    # Four times the seeds halves the standard error; the t quantiles shrink too.
    many = np.tile(values, 4)
    assert detectable_difference(many, many) < 0.5 * detectable_difference(values, values)
    assert np.isnan(detectable_difference(values[:1], values))
    assert detectable_difference(np.ones(3), np.ones(3)) == 0.0


def test_compare_groups_gives_each_non_reference_row_its_detectable_difference():
    frame = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "dev_f1": [0.80, 0.81, 0.82, 0.85, 0.86, 0.87]})
    rows = {row["arm"]: row for row in compare_groups(frame, "arm", reference="a").rows}
    assert np.isnan(rows["a"]["mde80"])
    assert rows["b"]["mde80"] == pytest.approx((2.776445 + 0.940965) * (2 * 0.0001 / 3) ** 0.5, rel=1e-4)
