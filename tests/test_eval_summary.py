"""The paired interval of a model comparison (cookbook/eval/summary.py), against hand computations."""

import pytest

from cookbook.eval.summary import paired_difference


def test_point_estimates_pool_per_sample_sums():
    """metric = sum(num) / sum(den) over the shared samples: instruction level pools instructions,
    (2 + 1) / (3 + 1) = 0.75 against (1 + 1) / 4 = 0.5; a sample only one side has is left out."""
    a = {"s1": (2.0, 3.0), "s2": (1.0, 1.0), "only_a": (0.0, 5.0)}
    b = {"s1": (1.0, 3.0), "s2": (1.0, 1.0)}
    result = paired_difference(a, b, resamples=100, seed=0)
    assert (result.a, result.b, result.samples) == (0.75, 0.5, 2)
    assert result.difference == pytest.approx(0.25)


def test_interval_matches_the_exact_bootstrap_distribution():
    """Per-sample differences d = (1, 0, 0): a resample's mean difference is k/3 with k ~ Binomial(3, 1/3),
    P(k=0) = 8/27, P(k<=2) = 26/27 < 0.975, so the 95% percentile interval is exactly [0, 1]; the
    point estimate is 2/3 - 1/3."""
    a = {"s1": (1.0, 1.0), "s2": (0.0, 1.0), "s3": (1.0, 1.0)}
    b = {"s1": (0.0, 1.0), "s2": (0.0, 1.0), "s3": (1.0, 1.0)}
    result = paired_difference(a, b, resamples=20_000, seed=3)
    assert result.difference == pytest.approx(1 / 3)
    assert (result.ci_low, result.ci_high) == (0.0, 1.0)
    # Same seed, same interval; the pairing makes identical models a point.
    assert paired_difference(a, b, resamples=20_000, seed=3) == result
    same = paired_difference(a, a, resamples=1_000, seed=0)
    assert same.difference == same.ci_low == same.ci_high == 0.0


def test_a_shared_difficulty_is_cancelled_by_the_pairing():
    """b is a shifted by 0.1 on every sample: the paired interval is the point 0.1, however spread
    the samples' own scores are."""
    a = {f"s{i}": (v, 1.0) for i, v in enumerate([0.1, 0.9, 0.4, 0.7, 0.2])}
    b = {key: (num - 0.1, den) for key, (num, den) in a.items()}
    result = paired_difference(a, b, resamples=2_000, seed=1)
    assert result.ci_low == pytest.approx(0.1) and result.ci_high == pytest.approx(0.1)
    assert paired_difference({"x": (1.0, 1.0)}, {"y": (1.0, 1.0)}, resamples=10, seed=0) is None
