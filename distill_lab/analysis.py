"""Claim checks on tracked runs: the temperature curve, and group comparisons.

Temperature: fit dev F1 = a + b·log T + c·(log T)² over seed-level points (so every T weighs by
its number of seeds), T* = exp(-b / 2c) when c < 0. Uncertainty by a seed bootstrap: each resample
keeps every temperature's mean and adds seed deviations drawn from the within-temperature
deviations POOLED over all temperatures (with 2-3 seeds per T, resampling each T's own seeds gives
intervals far too narrow; see `pooled_seed_noise`). Verdict "one interior optimum supported" only
when the curvature's 95 % CI lies below 0 AND T* and its 95 % CI lie inside the searched range.
Group comparisons (mappings, inits, KD vs no KD) give each difference Welch's t interval from the
two groups' own seeds (arms may differ in spread); the pooled bootstrap remains as an option.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

INTERIOR = "one interior optimum supported"


@dataclass
class TemperatureFit:
    points: int
    temperatures: list[float]
    means: list[float]
    stds: list[float]
    counts: list[int]
    coefficients: list[float]  # a, b, c of a + b·x + c·x², x = log T
    t_star: float | None
    t_star_ci: tuple[float, float] | None
    curvature: float
    curvature_ci: tuple[float, float]
    slope: float
    slope_ci: tuple[float, float]
    verdict: str
    detail: str = ""
    bootstrap: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Least squares on all seed-level points == weighted fit of per-T means with weight n.
    design = np.stack([np.ones_like(x), x, x * x], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coefficients


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    design = np.stack([np.ones_like(x), x], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(coefficients[1])


def _t_star(coefficients: np.ndarray) -> float | None:
    _, b, c = coefficients
    if c >= 0:
        return None
    # Nearly-linear fits put the vertex absurdly far away: clamp the exponent to stay finite.
    return float(math.exp(max(-700.0, min(700.0, -b / (2 * c)))))


def _t_ratio(df: int) -> float:
    """t(0.975, df) / z(0.975) (Cornish-Fisher; no scipy): widens intervals built from few seeds."""
    if df <= 0:
        return 1.0
    z = 1.959963984540054
    t = (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
         + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))
    return t / z


def pooled_seed_noise(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Seed deviations from their group's mean, pooled over groups (empty when no group repeats).

    Each deviation is scaled by sqrt(n/(n-1)) (unbiased variance) and by t(df)/z, df = sum(n-1), so
    a percentile bootstrap from them has about its nominal coverage even with 2-3 seeds per group.
    """
    frame = pd.DataFrame({"label": labels, "score": np.asarray(scores, dtype=float)})
    counts = frame.groupby("label")["score"].transform("count").to_numpy()
    centre = frame.groupby("label")["score"].transform("mean").to_numpy()
    repeated = counts > 1
    if not repeated.any():
        return np.zeros(0)
    df = int(repeated.sum()) - len(np.unique(np.asarray(labels)[repeated]))
    deviations = (frame["score"].to_numpy() - centre)[repeated] * np.sqrt(counts[repeated] / (counts[repeated] - 1))
    return deviations * _t_ratio(df)


def fit_temperature(temperatures: Sequence[float], scores: Sequence[float], *, n_bootstrap: int = 2000,
                    seed: int = 0, flat_tolerance: float = 0.002) -> TemperatureFit:
    """Quadratic fit of score vs log T with a seed bootstrap; see the module docstring."""
    frame = pd.DataFrame({"T": np.asarray(temperatures, dtype=float), "score": np.asarray(scores, dtype=float)})
    if frame.empty or frame["T"].nunique() < 3:
        raise ValueError(f"a temperature fit needs at least 3 distinct temperatures, got {frame['T'].nunique()}")
    if (frame["T"] <= 0).any():
        raise ValueError("temperatures must be > 0")
    grouped = frame.groupby("T")["score"]
    x = np.log(frame["T"].to_numpy())
    y = frame["score"].to_numpy()
    coefficients = _fit(x, y)
    t_star = _t_star(coefficients)
    slope = _slope(x, y)

    # Seed bootstrap with the seed noise POOLED over temperatures: each point keeps its
    # temperature's mean and gets a deviation drawn from all within-T deviations (scaled by
    # sqrt(n/(n-1)) and t(df)/z, see pooled_seed_noise). Resampling the 2-3 seeds of each
    # temperature separately makes every interval far too narrow (a T whose seeds happen to agree
    # looks noise-free): on pure noise it "supported" an interior optimum about 10% of the time.
    rng = np.random.default_rng(seed)
    noise = pooled_seed_noise(y, frame["T"].to_numpy())
    centre = grouped.transform("mean").to_numpy()
    design = np.stack([np.ones_like(x), x, x * x], axis=1)
    if noise.size == 0:  # one seed per temperature: the quadratic fit's residuals are all we have
        df = len(y) - 3
        noise = (y - design @ coefficients) * (math.sqrt(len(y) / df) * _t_ratio(df) if df > 0 else 0.0)
    quadratic = np.linalg.pinv(design)  # x is the same in every resample: one solve for all of them
    linear = np.linalg.pinv(design[:, :2])
    resamples = centre + rng.choice(noise, size=(n_bootstrap, len(y)), replace=True)
    boot = resamples @ quadratic.T  # (n_bootstrap, 3)
    curvatures = boot[:, 2]
    slopes = (resamples @ linear.T)[:, 1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        vertex = np.exp(np.clip(-boot[:, 1] / (2 * boot[:, 2]), -700.0, 700.0))
    # No maximum in a resample (c >= 0): the optimum runs off to one end of the T axis.
    stars = np.where(boot[:, 2] < 0, vertex, np.where(boot[:, 1] > 0, 1e12, 1e-12))
    curvature_ci = (float(np.percentile(curvatures, 2.5)), float(np.percentile(curvatures, 97.5)))
    slope_ci = (float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5)))
    star_ci = (float(np.percentile(stars, 2.5)), float(np.percentile(stars, 97.5)))
    low, high = float(frame["T"].min()), float(frame["T"].max())
    means = grouped.mean()
    spread = float(means.max() - means.min())

    if curvature_ci[1] < 0 and t_star is not None and low < t_star < high and low <= star_ci[0] \
            and star_ci[1] <= high:
        verdict, detail = INTERIOR, (f"concave in log T with its maximum at T*={t_star:.3g} (95% CI "
                                     f"[{star_ci[0]:.3g}, {star_ci[1]:.3g}]) inside [{low:g}, {high:g}]")
    elif curvature_ci[1] < 0 and t_star is not None and low < t_star < high:
        verdict = "inconclusive"
        detail = (f"concave with its fitted maximum T*={t_star:.3g} inside [{low:g}, {high:g}], but its 95% CI "
                  f"[{star_ci[0]:.3g}, {star_ci[1]:.3g}] reaches past the searched range: widen it or add seeds")
    elif curvature_ci[1] < 0 and t_star is not None:
        verdict = "optimum at the edge"
        detail = f"concave, but the fitted maximum T*={t_star:.3g} is outside the searched range [{low:g}, {high:g}]"
    elif slope_ci[0] > 0 or slope_ci[1] < 0:
        direction = "increasing" if slope > 0 else "decreasing"
        verdict = f"monotone ({direction})"
        detail = f"no supported curvature; dev F1 is {direction} in T across [{low:g}, {high:g}]"
    elif spread <= flat_tolerance or (curvature_ci[0] <= 0 <= curvature_ci[1]):
        verdict = "flat"
        detail = (f"neither curvature nor slope is distinguishable from seed noise (range of means "
                  f"{spread * 100:.2f} F1 points)")
    else:
        verdict, detail = "inconclusive", "the curve is convex (a minimum, not a maximum)"
    return TemperatureFit(
        points=len(frame), temperatures=[float(t) for t in means.index], means=[float(m) for m in means],
        stds=[float(s) if s == s else 0.0 for s in grouped.std()], counts=[int(c) for c in grouped.count()],
        coefficients=[float(c) for c in coefficients], t_star=t_star,
        t_star_ci=star_ci if t_star is not None else None, curvature=float(coefficients[2]),
        curvature_ci=curvature_ci, slope=slope, slope_ci=slope_ci, verdict=verdict, detail=detail,
        bootstrap=n_bootstrap)


@dataclass
class GroupComparison:
    """Each group's mean ± std and the difference to a reference group with a bootstrap CI."""

    factor: str
    reference: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def as_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def welch_interval(values: np.ndarray, base: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """CI of mean(values) - mean(base) without assuming equal variances (Welch's t, scipy).

    NaN when a side has fewer than 2 seeds; zero width when both sides have no spread at all.
    """
    from scipy import stats

    if len(values) < 2 or len(base) < 2:
        return float("nan"), float("nan")
    diff = float(np.mean(values) - np.mean(base))
    if np.var(values) == 0 and np.var(base) == 0:
        return diff, diff
    interval = stats.ttest_ind(values, base, equal_var=False).confidence_interval(confidence)
    return float(interval.low), float(interval.high)


def compare_groups(frame: pd.DataFrame, factor: str, *, reference: str | None = None, score: str = "dev_f1",
                   method: str = "welch", n_bootstrap: int = 2000, seed: int = 0) -> GroupComparison:
    """E.g. mapping strategies (is head<->tail within noise of the best?) or init strategies.

    method "welch": each difference to the reference gets Welch's t interval from the two groups'
    own seeds (no equal-variance assumption: one arm's seeds can spread 0.1 F1 and another's 3).
    method "pooled": a bootstrap of group means with the seed noise pooled over groups (more
    power when the arms truly share one noise level; see pooled_seed_noise).
    """
    if method not in ("welch", "pooled"):
        raise ValueError(f"method {method!r}: allowed welch, pooled")
    groups = {name: group[score].dropna().to_numpy() for name, group in frame.groupby(factor)}
    groups = {name: values for name, values in groups.items() if len(values)}
    if not groups:
        raise ValueError(f"no runs to compare by {factor}")
    means = {name: float(values.mean()) for name, values in groups.items()}
    reference = reference if reference in groups else max(means, key=means.get)
    base = groups[reference]
    noise = pooled_seed_noise(frame[score].to_numpy(), frame[factor].to_numpy())
    # No group ran more than one seed: there is no noise estimate, so no interval and no verdict
    # (a zero-width "CI" would call any difference real).
    rng = np.random.default_rng(seed)
    rows = []
    for name, values in sorted(groups.items(), key=lambda item: -means[item[0]]):
        if method == "welch":
            low, high = welch_interval(values, base) if name != reference else (0.0, 0.0)
            if name == reference and len(base) < 2:
                low, high = float("nan"), float("nan")
        elif noise.size:
            diffs = (means[name] + rng.choice(noise, (n_bootstrap, len(values))).mean(axis=1)) \
                - (means[reference] + rng.choice(noise, (n_bootstrap, len(base))).mean(axis=1))
            low, high = float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))
        else:
            low, high = float("nan"), float("nan")
        known = low == low
        rows.append({
            factor: name, "n": len(values), "mean": means[name],
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            f"diff_vs_{reference}": means[name] - means[reference], "ci_low": low, "ci_high": high,
            "within_noise": (bool(low <= 0 <= high) if name != reference else True) if known else None,
        })
    return GroupComparison(factor, reference, rows)


def temperature_figure(fit: TemperatureFit, title: str = "dev F1 vs temperature") -> Any:
    """Points with seed error bars, the fitted curve and the T* band (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    temps = np.asarray(fit.temperatures)
    axes.errorbar(temps, np.asarray(fit.means) * 100, yerr=np.asarray(fit.stds) * 100, fmt="o", capsize=4,
                  label="mean ± std over seeds")
    grid = np.exp(np.linspace(math.log(temps.min()), math.log(temps.max()), 200))
    a, b, c = fit.coefficients
    axes.plot(grid, (a + b * np.log(grid) + c * np.log(grid) ** 2) * 100, "-", label="quadratic fit in log T")
    if fit.t_star is not None and fit.t_star_ci is not None:
        low, high = max(fit.t_star_ci[0], temps.min() / 2), min(fit.t_star_ci[1], temps.max() * 2)
        axes.axvspan(low, high, alpha=0.15, color="tab:green", label="95% CI of T*")
        axes.axvline(fit.t_star, color="tab:green", linestyle="--", label=f"T* = {fit.t_star:.2f}")
    axes.set_xscale("log")
    axes.set_xlabel("temperature T (log scale)")
    axes.set_ylabel("dev F1 (%)")
    axes.set_title(f"{title}\n{fit.verdict}", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
