"""Known answers for analysis.stats: each interval and test against a value computed by hand or a
planted truth (identical arms contain 0, a planted difference is found, intervals cover as stated)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import stats


def test_mean_ci_matches_the_t_interval_by_hand():
    e = stats.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) * sd 1 / sqrt(3)
    assert e.value == 2.0 and e.sd == 1.0 and e.n == 3
    assert e.lo == pytest.approx(2 - half) and e.hi == pytest.approx(2 + half)


def test_mean_ci_of_one_seed_has_no_interval_and_bad_input_is_refused():
    e = stats.mean_ci([7.0])
    assert e.value == 7.0 and math.isnan(e.lo) and math.isnan(e.hi)
    with pytest.raises(ValueError, match="finite"):
        stats.mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="no values"):
        stats.mean_ci([])
    with pytest.raises(ValueError, match="level"):
        stats.mean_ci([1.0, 2.0], level=1.5)


def test_mean_ci_covers_the_true_mean_at_its_level():
    rng = np.random.default_rng(0)
    hits = [(e := stats.mean_ci(rng.normal(5.0, 2.0, 3))).lo <= 5.0 <= e.hi for _ in range(2000)]
    assert 0.93 <= np.mean(hits) <= 0.97


def test_mean_difference_identical_arms_contain_zero():
    d = stats.mean_difference([50.0, 55.0, 48.0], [50.0, 55.0, 48.0])
    assert d.effect == 0 and d.contains_zero() and d.p == 1.0
    assert stats.verdict(d, "lower") == "inconclusive"


def test_mean_difference_finds_a_planted_difference():
    rng = np.random.default_rng(1)
    a, b = 40 + rng.normal(0, 2, 5), 60 + rng.normal(0, 2, 5)
    d = stats.mean_difference(a, b)
    assert d.hi < 0 and d.effect == pytest.approx(a.mean() - b.mean())
    assert d.p == pytest.approx(2 / 252)  # exact permutation: only the two extreme splits of 5+5 are as extreme
    assert stats.verdict(d, "lower") == "reproduced" and stats.verdict(d, "higher") == "refuted"


def test_mean_difference_welch_interval_by_hand():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0, 8.0])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    from scipy import stats as sps

    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    d = stats.mean_difference(a, b)
    assert d.lo == pytest.approx(-3 - half) and d.hi == pytest.approx(-3 + half)


def test_mean_difference_without_spread_or_seeds():
    exact = stats.mean_difference([10.0, 10.0], [12.0, 12.0])
    assert (exact.lo, exact.hi, exact.p) == (-2.0, -2.0, 0.0)
    one = stats.mean_difference([10.0], [12.0, 13.0])
    assert one.effect == -2.5 and math.isnan(one.lo) and stats.verdict(one, "lower") == "inconclusive"


def test_censored_steps_count_never_emerged_runs_at_their_last_step():
    steps, n = stats.censored_steps([40.0, math.nan, 55.0], [150.0, 150.0, 150.0])
    assert steps.tolist() == [40.0, 150.0, 55.0] and n == 1
    with pytest.raises(ValueError, match="last step"):
        stats.censored_steps([math.nan], [math.nan])


def _utterances(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    words = rng.integers(5, 30, n)
    return rng.binomial(words, 0.2), words


def test_pooled_wer_sums_the_runs_of_an_arm_per_utterance():
    errors = np.array([[1, 2, 0], [3, 0, 1]])
    words = np.array([[10, 5, 5], [10, 5, 5]])
    ci = stats.pooled_wer(errors, words, n_resamples=500)
    assert ci.wer == pytest.approx(7 / 40) and ci.lo <= ci.wer <= ci.hi and ci.n_utterances == 3


def test_paired_bootstrap_identical_arms():
    e, w = _utterances(200)
    d = stats.paired_wer_difference(e[None], e[None], w, n_resamples=1000)
    assert d.effect == 0 and (d.lo, d.hi) == (0.0, 0.0) and d.p == 1.0
    assert stats.verdict(d, "lower") == "inconclusive"


def test_paired_bootstrap_finds_a_planted_difference_that_unpaired_intervals_miss():
    # Utterances differ wildly in difficulty; arm A makes one error fewer on every fifth utterance.
    rng = np.random.default_rng(3)
    words = rng.integers(5, 40, 300)
    b = rng.binomial(words, rng.uniform(0.05, 0.6, 300))
    a = b.copy()
    a[::5] = np.maximum(a[::5] - 1, 0)
    d = stats.paired_wer_difference(a[None], b[None], words, n_resamples=2000)
    assert d.hi < 0 and d.effect == pytest.approx((a.sum() - b.sum()) / words.sum())
    assert stats.verdict(d, "lower") == "reproduced"
    ca, cb = stats.pooled_wer(a[None], words[None]), stats.pooled_wer(b[None], words[None])
    assert ca.hi > cb.lo  # the two arms' own intervals overlap: only the paired test sees the difference


def test_paired_bootstrap_covers_a_null_at_its_level():
    rng = np.random.default_rng(4)
    covered = 0
    for i in range(200):
        words = rng.integers(5, 30, 80)
        a, b = rng.binomial(words, 0.2), rng.binomial(words, 0.2)  # same true WER
        covered += stats.paired_wer_difference(a[None], b[None], words, n_resamples=400, seed=i).contains_zero()
    assert 0.90 <= covered / 200 <= 0.99


def test_paired_bootstrap_refuses_unpaired_arms():
    e, w = _utterances(10)
    with pytest.raises(ValueError, match="not paired"):
        stats.paired_wer_difference(e[None], e[None, :9], w, n_resamples=10)


def test_rate_ci_clopper_pearson_by_hand():
    none = stats.rate_ci(0, 3)
    assert none.value == 0 and none.lo == 0 and none.hi == pytest.approx(1 - 0.025 ** (1 / 3))
    allr = stats.rate_ci(3, 3)
    assert allr.hi == 1 and allr.lo == pytest.approx(0.025 ** (1 / 3))
    with pytest.raises(ValueError):
        stats.rate_ci(4, 3)


def test_rate_difference_identical_and_planted():
    same = stats.rate_difference(2, 3, 2, 3)
    assert same.effect == 0 and same.contains_zero() and same.p == 1.0
    planted = stats.rate_difference(10, 10, 0, 10)
    assert planted.lo > 0 and planted.p < 1e-4
    assert stats.verdict(planted, "higher") == "reproduced"


def test_verdict_rules():
    d = lambda lo, hi: stats.Difference((lo + hi) / 2, lo, hi, math.nan, "t")  # noqa: E731
    assert stats.verdict(d(-3, -1), "lower") == "reproduced"
    assert stats.verdict(d(1, 3), "lower") == "refuted"
    assert stats.verdict(d(-1, 1), "higher") == "inconclusive"
    assert stats.verdict(d(0, 2), "higher") == "inconclusive"  # touching 0 is not excluding it
    assert stats.verdict(d(math.nan, math.nan), "higher") == "inconclusive"
    with pytest.raises(ValueError):
        stats.verdict(d(1, 2), "better")
