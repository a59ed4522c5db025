"""ml.stats: intervals computed on known inputs, and the verdicts a report may print."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml import stats
from ml.stats import Estimate, mean, paired_difference, rate, verdict


def test_wilson_matches_the_textbook_values():
    # 2 of 12: the Wilson 95% interval is [0.047, 0.448] (Newcombe 1998, Table I style computation)
    estimate = rate([1, 1] + [0] * 10)
    assert estimate.value == pytest.approx(2 / 12)
    assert (estimate.ci_low, estimate.ci_high) == (pytest.approx(0.0470, abs=5e-4), pytest.approx(0.4480, abs=5e-4))
    assert estimate.n == 12 and estimate.method == "wilson"
    assert str(estimate) == "0.167 [0.047, 0.448] n=12"


def test_wilson_at_the_edges_is_not_degenerate():
    none = rate([False] * 10)
    assert none.value == 0 and none.ci_low == 0 and none.ci_high == pytest.approx(0.2775, abs=5e-4)
    every = rate([True] * 10)
    assert every.ci_high == 1 and every.ci_low == pytest.approx(0.7225, abs=5e-4)


def test_rate_refuses_values_that_are_not_outcomes():
    with pytest.raises(ValueError):
        rate([0.5, 1.0])
    with pytest.raises(ValueError):
        rate([1, 0], split="validation")


def test_empty_inputs_are_nan_with_n_zero():
    for estimate in (rate([]), mean([]), paired_difference([], [])):
        assert estimate.n == 0 and math.isnan(estimate.value)
    assert verdict(paired_difference([], []), "a", "b") == "not measured (n=0)"


def test_bootstrap_mean_is_seeded_and_covers_the_mean():
    values = np.random.default_rng(3).normal(0.4, 0.1, size=200)
    first, second = mean(values, seed=1), mean(values, seed=1)
    assert first == second
    assert first.ci_low < values.mean() < first.ci_high
    # the bootstrap's half-width is close to 1.96 standard errors
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert (first.ci_high - first.ci_low) / 2 == pytest.approx(1.96 * se, rel=0.15)
    with pytest.raises(ValueError):
        mean([1.0, float("nan")])


def test_paired_difference_is_tighter_than_unpaired_when_items_share_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1, size=60)
    a = difficulty + 0.3 + rng.normal(0, 0.05, size=60)
    b = difficulty + rng.normal(0, 0.05, size=60)
    diff = paired_difference(a, b)
    assert diff.value == pytest.approx(np.mean(a - b))
    assert diff.method == "paired_bootstrap" and diff.excludes_zero and diff.ci_low > 0.2
    # the two means' own intervals overlap widely: only the pairing shows the difference
    assert mean(a).ci_low < mean(b).ci_high
    assert verdict(diff, "trained", "base") == "trained beats base"
    assert verdict(diff, "loss_a", "loss_b", higher_is_better=False) == "loss_b beats loss_a"


def test_no_difference_is_said_so_with_its_n():
    a = [1, 0, 1, 0, 1, 0, 1, 1]
    b = [0, 1, 1, 0, 1, 0, 1, 1]
    diff = paired_difference(a, b)
    assert diff.value == 0 and not diff.excludes_zero
    assert verdict(diff, "trained", "base") == "no measurable difference at n=8"


def test_paired_difference_needs_the_same_items():
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_wilson_interval_contains_the_estimate(outcomes):
    estimate = rate(outcomes)
    assert 0 <= estimate.ci_low <= estimate.value <= estimate.ci_high <= 1


def test_estimate_as_dict_round_trips():
    estimate = rate([1, 0, 1], split="dev")
    assert Estimate(**estimate.as_dict()) == estimate and estimate.split == "dev"


def test_quantile_interval_brackets_the_percentile_and_is_seeded():
    values = list(range(1, 101))  # p95 of 1..100 is 95.05 (linear interpolation)
    p95 = stats.quantile(values, 95, seed=3)
    assert p95.value == pytest.approx(95.05) and p95.n == 100 and p95.method == "bootstrap_quantile"
    assert p95.ci_low <= p95.value <= p95.ci_high and p95.ci_high <= 100 and p95.ci_low > 85
    assert stats.quantile(values, 95, seed=3) == p95
    assert stats.quantile([], 50).n == 0


def test_ratio_is_a_ratio_of_sums_not_a_mean_of_ratios():
    tokens, seconds = [10, 10, 100], [1, 1, 100]  # mean of ratios 7.0; 120 tokens in 102 s
    per_second = stats.ratio(tokens, seconds)
    assert per_second.value == pytest.approx(120 / 102) and per_second.n == 3
    assert per_second.ci_low <= per_second.value <= per_second.ci_high
    assert stats.ratio([2, 4, 6], [1, 2, 3]).ci_low == pytest.approx(2.0)  # every resample gives 2: a zero-width CI
    with pytest.raises(ValueError, match="one denominator per numerator"):
        stats.ratio([1, 2], [1])
    assert stats.ratio([1], [0]).n == 0
