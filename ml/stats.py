"""Figures with their evidence: a metric's value, its sample size and a 95% interval, and comparisons as paired
differences with theirs.

- :func:`rate` — a proportion of successes with the Wilson score interval (sound at small n and at 0 or 1, where
  the normal approximation collapses to a zero-width interval).
- :func:`mean` — a mean with a seeded percentile bootstrap interval; :func:`quantile` (a latency's p95) and
  :func:`ratio` (a ratio of sums over items: tokens per second, KL per token) likewise.
- :func:`paired_difference` — the mean of per-item differences ``a - b`` over the *same* items, with a seeded
  percentile bootstrap over items (resampling items keeps each item's pair together, so the shared difficulty of
  an item cancels and the interval is much tighter than comparing two independent intervals).
- :func:`verdict` — the words a report may use: "beats" only when the difference's interval excludes 0.

Every :class:`Estimate` prints as ``0.167 [0.050, 0.448] n=12``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Z_95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Estimate:
    """A measured figure: ``value`` on ``n`` items of ``split``, with the 95% interval [ci_low, ci_high]."""

    value: float
    n: int
    ci_low: float
    ci_high: float
    split: str = "test"
    method: str = "wilson"

    def __str__(self) -> str:
        return f"{_fmt(self.value)} [{_fmt(self.ci_low)}, {_fmt(self.ci_high)}] n={self.n}"

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def excludes_zero(self) -> bool:
        return self.n > 0 and (self.ci_low > 0 or self.ci_high < 0)


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return split


def rate(outcomes: Sequence[bool | int | float], *, split: str = "test") -> Estimate:
    """The share of true outcomes with its Wilson 95% interval. Outcomes are 0/1 (bools, ints, or floats in {0, 1})."""
    values = np.asarray(list(outcomes), dtype=float)
    if values.size and not np.isin(values, (0.0, 1.0)).all():
        raise ValueError("rate() takes 0/1 outcomes; use mean() for other values")
    n = int(values.size)
    if n == 0:
        return Estimate(math.nan, 0, math.nan, math.nan, _check_split(split), "wilson")
    p = float(values.mean())
    z2 = Z_95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if p == 0 else max(0.0, centre - half)  # exact at the edges (the formula gives 1 - 1e-16)
    high = 1.0 if p == 1 else min(1.0, centre + half)
    return Estimate(p, n, low, high, _check_split(split), "wilson")


def _bootstrap_means(values: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = values.size
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n, 1))  # bounded memory for large n
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        means[start:start + count] = values[rng.integers(0, n, size=(count, n))].mean(axis=1)
    return means


def mean(values: Sequence[float], *, split: str = "test", seed: int = 0,
         resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """The mean with a seeded percentile-bootstrap 95% interval (NaN values are an error: say what they mean)."""
    array = np.asarray(list(values), dtype=float)
    if np.isnan(array).any():
        raise ValueError("mean() got NaN values; drop or score them before estimating")
    if array.size == 0:
        return Estimate(math.nan, 0, math.nan, math.nan, _check_split(split), "bootstrap")
    boot = _bootstrap_means(array, seed, resamples)
    low, high = np.percentile(boot, [2.5, 97.5])
    return Estimate(float(array.mean()), int(array.size), float(low), float(high), _check_split(split), "bootstrap")


def quantile(values: Sequence[float], q: float, *, split: str = "test", seed: int = 0,
             resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """The ``q``-th percentile (0-100) with a seeded percentile-bootstrap 95% interval (e.g. a latency's p95)."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        return Estimate(math.nan, 0, math.nan, math.nan, _check_split(split), "bootstrap_quantile")
    rng = np.random.default_rng(seed)
    boot = np.percentile(array[rng.integers(0, array.size, size=(resamples, array.size))], q, axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return Estimate(float(np.percentile(array, q)), int(array.size), float(low), float(high), _check_split(split),
                    "bootstrap_quantile")


def ratio(numerators: Sequence[float], denominators: Sequence[float], *, split: str = "test", seed: int = 0,
          resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """``sum(numerators) / sum(denominators)`` over items (tokens per second over requests, a KL per token over
    completions), with a seeded bootstrap over items that keeps each item's pair together; ``n`` counts items."""
    num, den = np.asarray(list(numerators), dtype=float), np.asarray(list(denominators), dtype=float)
    if num.shape != den.shape:
        raise ValueError(f"ratio needs one denominator per numerator: {num.size} vs {den.size}")
    if num.size == 0 or den.sum() == 0:
        return Estimate(math.nan, 0, math.nan, math.nan, _check_split(split), "bootstrap_ratio")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num.size, size=(resamples, num.size))
    sums = den[picks].sum(axis=1)
    boot = num[picks].sum(axis=1)[sums > 0] / sums[sums > 0]
    low, high = np.percentile(boot, [2.5, 97.5])
    return Estimate(float(num.sum() / den.sum()), int(num.size), float(low), float(high), _check_split(split),
                    "bootstrap_ratio")


def paired_difference(a: Sequence[float], b: Sequence[float], *, split: str = "test", seed: int = 0,
                      resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """Mean of ``a[i] - b[i]`` over the same items, with a seeded paired-bootstrap 95% interval."""
    first, second = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if first.shape != second.shape:
        raise ValueError(f"paired_difference needs the same items on both sides: {first.size} vs {second.size}")
    estimate = mean(first - second, split=split, seed=seed, resamples=resamples)
    return Estimate(estimate.value, estimate.n, estimate.ci_low, estimate.ci_high, estimate.split,
                    "paired_bootstrap")


def verdict(difference: Estimate, better: str, worse: str, *, higher_is_better: bool = True) -> str:
    """The claim a report may make about ``difference`` = better - worse (as named by the caller)."""
    if difference.n == 0:
        return "not measured (n=0)"
    if not difference.excludes_zero:
        return f"no measurable difference at n={difference.n}"
    ahead = (difference.ci_low > 0) == higher_is_better
    return f"{better} beats {worse}" if ahead else f"{worse} beats {better}"


EVIDENCE_FILE = "metrics_evidence.json"  # beside an evaluation's flat metrics.json: {metric: {n, ci_low, ...}}


def split_evidence(metrics: Mapping[str, float | Estimate]) -> tuple[dict[str, float], dict[str, dict]]:
    """(flat {metric: value}, {metric: {n, ci_low, ci_high, split, method}}) of a metrics dict that mixes
    :class:`Estimate` s and plain numbers; the second holds the estimates only."""
    flat, evidence = {}, {}
    for name, value in metrics.items():
        if isinstance(value, Estimate):
            flat[name] = value.value
            evidence[name] = {k: v for k, v in value.as_dict().items() if k != "value"}
        else:
            flat[name] = value
    return flat, evidence


def write_metrics_files(folder, metrics: Mapping[str, float | Estimate]) -> dict[str, float]:
    """``metrics.json`` (flat numbers, as readers expect) and ``metrics_evidence.json`` (n, interval, split of each
    estimate) in ``folder``; returns the flat dict."""
    import json
    from pathlib import Path

    flat, evidence = split_evidence(metrics)
    Path(folder, "metrics.json").write_text(json.dumps(flat, indent=2))
    Path(folder, EVIDENCE_FILE).write_text(json.dumps(evidence, indent=2))
    return flat


def metadata_text(metrics: Mapping[str, float | Estimate]) -> dict[str, float | str]:
    """Dagster-friendly values: a number stays a number, an estimate becomes its ``0.167 [0.047, 0.448] n=12``."""
    return {k: (str(v) if isinstance(v, Estimate) else v) for k, v in metrics.items()}


def estimates_table(metrics: Mapping[str, float | Estimate], split: str = "test") -> str:
    """Markdown, one row per estimate of ``metrics``: ``| `name` | 0.167 [0.047, 0.448] n=12 |`` (UI metadata)."""
    rows = [f"| `{k}` | {v} |" for k, v in metrics.items() if isinstance(v, Estimate)]
    return "\n".join([f"| metric | value [95% interval] n ({split}) |", "|---|---|", *rows])
