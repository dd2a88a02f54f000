"""Claim checks on tracked runs: the temperature curve, and group comparisons.

Temperature: fit dev F1 = a + b·log T + c·(log T)² over seed-level points (so every T weighs by
its number of seeds), T* = exp(-b / 2c) when c < 0. Uncertainty by a bootstrap that resamples
seeds within each temperature. Verdict "one interior optimum supported" only when the curvature's
95 % CI lies below 0 AND T* (and its CI) lies inside the searched range.
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

    rng = np.random.default_rng(seed)
    groups = [group.to_numpy() for _, group in grouped]
    logs = [math.log(t) for t, _ in grouped]
    curvatures, slopes, stars = [], [], []
    for _ in range(n_bootstrap):
        xs, ys = [], []
        for log_t, values in zip(logs, groups):
            sample = rng.choice(values, size=len(values), replace=True)
            xs.extend([log_t] * len(values))
            ys.extend(sample)
        xb, yb = np.asarray(xs), np.asarray(ys)
        cb = _fit(xb, yb)
        curvatures.append(cb[2])
        slopes.append(_slope(xb, yb))
        star = _t_star(cb)
        # No maximum in this resample: the optimum runs off to one end of the T axis.
        stars.append(star if star is not None else (1e12 if cb[1] > 0 else 1e-12))
    curvature_ci = (float(np.percentile(curvatures, 2.5)), float(np.percentile(curvatures, 97.5)))
    slope_ci = (float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5)))
    star_ci = (float(np.percentile(stars, 2.5)), float(np.percentile(stars, 97.5)))
    low, high = float(frame["T"].min()), float(frame["T"].max())
    means = grouped.mean()
    spread = float(means.max() - means.min())

    if curvature_ci[1] < 0 and t_star is not None and low < t_star < high:
        verdict, detail = INTERIOR, f"concave in log T with its maximum at T*={t_star:.3g} inside [{low:g}, {high:g}]"
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


def compare_groups(frame: pd.DataFrame, factor: str, *, reference: str | None = None, score: str = "dev_f1",
                   n_bootstrap: int = 2000, seed: int = 0) -> GroupComparison:
    """E.g. mapping strategies (is head<->tail within noise of the best?) or init strategies."""
    groups = {name: group[score].to_numpy() for name, group in frame.groupby(factor)}
    if not groups:
        raise ValueError(f"no runs to compare by {factor}")
    means = {name: float(values.mean()) for name, values in groups.items()}
    reference = reference if reference in groups else max(means, key=means.get)
    rng = np.random.default_rng(seed)
    base = groups[reference]
    rows = []
    for name, values in sorted(groups.items(), key=lambda item: -means[item[0]]):
        diffs = [rng.choice(values, len(values)).mean() - rng.choice(base, len(base)).mean() for _ in range(n_bootstrap)]
        low, high = float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))
        rows.append({
            factor: name, "n": len(values), "mean": means[name],
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            f"diff_vs_{reference}": means[name] - means[reference], "ci_low": low, "ci_high": high,
            "within_noise": bool(low <= 0 <= high) if name != reference else True,
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
