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
from matplotlib.figure import Figure
from scipy import stats

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
    """t(0.975, df) / z(0.975): widens intervals built from few seeds."""
    if df <= 0:
        return 1.0
    return float(stats.t.ppf(0.975, df) / stats.norm.ppf(0.975))


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


def _verdict(t_star: float | None, star_ci: tuple[float, float], curvature_ci: tuple[float, float], slope: float,
             slope_ci: tuple[float, float], low: float, high: float, spread: float,
             flat_tolerance: float) -> tuple[str, str]:
    """The temperature fit's verdict and its one-line reason, from the bootstrap intervals."""
    if curvature_ci[1] < 0 and t_star is not None and low < t_star < high and low <= star_ci[0] \
            and star_ci[1] <= high:
        return INTERIOR, (f"concave in log T with its maximum at T*={t_star:.3g} (95% CI "
                          f"[{star_ci[0]:.3g}, {star_ci[1]:.3g}]) inside [{low:g}, {high:g}]")
    if curvature_ci[1] < 0 and t_star is not None and low < t_star < high:
        return "inconclusive", (f"concave with its fitted maximum T*={t_star:.3g} inside [{low:g}, {high:g}], "
                                f"but its 95% CI [{star_ci[0]:.3g}, {star_ci[1]:.3g}] reaches past the searched range: widen it "
                                "or add seeds")
    if curvature_ci[1] < 0 and t_star is not None:
        return "optimum at the edge", (f"concave, but the fitted maximum T*={t_star:.3g} is outside the searched "
                                       f"range [{low:g}, {high:g}]")
    if slope_ci[0] > 0 or slope_ci[1] < 0:
        direction = "increasing" if slope > 0 else "decreasing"
        return f"monotone ({direction})", (f"no supported curvature; dev F1 is {direction} in T across "
                                           f"[{low:g}, {high:g}]")
    if spread <= flat_tolerance or (curvature_ci[0] <= 0 <= curvature_ci[1]):
        return "flat", (f"neither curvature nor slope is distinguishable from seed noise (range of means "
                        f"{spread * 100:.2f} F1 points)")
    return "inconclusive", "the curve is convex (a minimum, not a maximum)"


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

    verdict, detail = _verdict(t_star, star_ci, curvature_ci, slope, slope_ci, low, high,
                               spread, flat_tolerance)
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
    if len(values) < 2 or len(base) < 2:
        return float("nan"), float("nan")
    diff = float(np.mean(values) - np.mean(base))
    if np.var(values) == 0 and np.var(base) == 0:
        return diff, diff
    interval = stats.ttest_ind(values, base, equal_var=False).confidence_interval(confidence)
    return float(interval.low), float(interval.high)


def detectable_difference(values: np.ndarray, base: np.ndarray, *, confidence: float = 0.95,
                          power: float = 0.8) -> float:
    """The smallest true difference of means this design detects with `power` (Welch's t, two-sided).

    (t_{1-a/2} + t_{power}) x the standard error of the difference, on Welch-Satterthwaite degrees of
    freedom from the two arms' own seeds: what an interval containing 0 can still rule out. NaN when
    a side has fewer than 2 seeds.
    """
    if len(values) < 2 or len(base) < 2:
        return float("nan")
    va, vb = np.var(values, ddof=1) / len(values), np.var(base, ddof=1) / len(base)
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(values) - 1) + vb ** 2 / (len(base) - 1))
    return float((stats.t.ppf(1 - (1 - confidence) / 2, df) + stats.t.ppf(power, df)) * se)


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
            "mde80": detectable_difference(values, base) if name != reference else float("nan"),
        })
    return GroupComparison(factor, reference, rows)


@dataclass(frozen=True)
class Baseline:
    """A reference arm drawn across the temperature plot (e.g. the no-KD twin): its seeds' mean ± std."""

    label: str
    mean: float
    std: float
    seeds: int


def temperature_figure(fit: TemperatureFit, title: str = "dev F1 vs temperature", *,
                       baseline: Baseline | None = None) -> Any:
    """Points with seed error bars, the fitted curve, the T* band and a baseline's line (matplotlib figure)."""
    figure = Figure(figsize=(6.4, 4.0))  # the object API: no pyplot global state to close
    axes = figure.subplots()
    temps = np.asarray(fit.temperatures)
    if baseline is not None:
        axes.axhspan((baseline.mean - baseline.std) * 100, (baseline.mean + baseline.std) * 100, alpha=0.15,
                     color="tab:gray")
        axes.axhline(baseline.mean * 100, color="tab:gray", linestyle=":",
                     label=f"{baseline.label}: {baseline.mean * 100:.2f} ± {baseline.std * 100:.2f} (n={baseline.seeds})")
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
    # A baseline far below the curve sits where "best" would put the legend (patches are not avoided).
    axes.legend(fontsize=8, loc="upper right" if baseline is not None else "best")
    figure.tight_layout()
    return figure
