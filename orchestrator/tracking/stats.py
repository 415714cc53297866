"""Statistics for comparing adapters over seeds and records: means with t intervals, paired differences.

A comparison of two adapters from one seed each is an anecdote; these turn repeated runs into
``mean ± half-width`` (95% by default) and say whether a difference is larger than the noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with its two-sided confidence interval [low, high] (None when n < 2);
    ``half_width``: the larger distance from the mean to an end (the two are equal for t intervals)."""

    n: int
    mean: float
    std: float | None
    half_width: float | None
    level: float = LEVEL
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.half_width is not None and self.low is None:
            object.__setattr__(self, "low", self.mean - self.half_width)
            object.__setattr__(self, "high", self.mean + self.half_width)

    @property
    def excludes_zero(self) -> bool | None:
        return None if self.low is None else (self.low > 0 or self.high < 0)

    def text(self, digits: int = 4) -> str:
        if self.half_width is None:
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} (n={self.n})"

    def to_json(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "half_width": self.half_width, "low": self.low,
                "high": self.high, "level": self.level}


def t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def finite(values) -> list[float]:
    """The values that are numbers (None and NaN dropped: a run that logged nothing, or diverged)."""
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def mean_ci(values, level: float = LEVEL) -> Interval:
    """Mean and Student-t interval of independent values (e.g. one final metric per seed)."""
    x = np.asarray(finite(values), dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    if x.size == 1:
        return Interval(1, float(x[0]), None, None, level)
    std = float(x.std(ddof=1))
    half = t_quantile(0.5 + level / 2, x.size - 1) * std / math.sqrt(x.size)
    return Interval(int(x.size), float(x.mean()), std, half, level)


def paired_ci(a: dict, b: dict, level: float = LEVEL) -> Interval | None:
    """The t interval of ``a[k] - b[k]`` over the keys both have (e.g. seeds); None when none is shared."""
    keys = sorted(set(a) & set(b), key=str)
    diffs = finite(a[k] - b[k] for k in keys if a[k] is not None and b[k] is not None)
    return mean_ci(diffs, level) if diffs else None


def paired_bootstrap(a, b, reps: int = 10_000, level: float = LEVEL, seed: int = 0, weights=None) -> Interval:
    """Mean of the paired differences a[i] - b[i] (e.g. per-record losses of two adapters on the same
    records) with a percentile bootstrap interval (records resampled with replacement, ``reps`` times).
    ``weights``: a weighted mean instead, sum w (a - b) / sum w, recomputed on each resample: with a[i], b[i]
    a record's mean loss and w[i] its target count, the difference of the two token-mean losses over the
    records (records of weight 0 drop out). ``half_width`` is the larger distance from the mean to the
    interval's ends."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two equally long, non-empty lists of paired values (got {a.shape}, {b.shape})")
    w = np.ones_like(a) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != a.shape or (w < 0).any():
        raise ValueError("weights: one non-negative weight per pair")
    keep = w > 0
    d, w = (a - b)[keep], w[keep]
    if d.size == 0:
        raise ValueError("every pair has weight 0")
    wd = w * d
    mean = float(wd.sum() / w.sum())
    if d.size == 1:
        return Interval(1, mean, None, None, level)
    rng = np.random.default_rng(seed)
    block = max(1, 2**22 // d.size)  # resamples per chunk: a few million indices at a time, whatever n is
    means = []
    for i in range(0, reps, block):
        idx = rng.integers(0, d.size, size=(min(block, reps - i), d.size))
        means.append(wd[idx].sum(axis=1) / w[idx].sum(axis=1))
    low, high = (float(q) for q in np.quantile(np.concatenate(means), [0.5 - level / 2, 0.5 + level / 2]))
    std = float(np.sqrt((w * (d - mean) ** 2).sum() / w.sum() * d.size / (d.size - 1)))  # weighted, n - 1
    return Interval(int(d.size), mean, std, max(mean - low, high - mean), level, low, high)


def separated(a: Interval, b: Interval) -> bool | None:
    """Whether two means differ by more than the sum of their half-widths (None without intervals)."""
    if a.half_width is None or b.half_width is None:
        return None
    return abs(a.mean - b.mean) > a.half_width + b.half_width
