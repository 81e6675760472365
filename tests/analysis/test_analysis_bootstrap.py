"""Bootstrap intervals of corpus WER: known answers, a readable reference implementation, coverage."""
import numpy as np
import pytest

from analysis import bootstrap
from analysis.bootstrap import bootstrap_wer


def synthetic(n: int, wer: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n utterances of 5-30 words, each word wrong with probability ``wer``."""
    rng = np.random.default_rng(seed)
    words = rng.integers(5, 31, size=n)
    return rng.binomial(words, wer), words


def test_identical_hypotheses_give_a_zero_width_interval_at_zero():
    ci = bootstrap_wer(np.zeros(50, int), np.full(50, 12))
    assert (ci.wer, ci.lo, ci.hi, ci.half_width) == (0.0, 0.0, 0.0, 0.0)
    assert ci.n_utterances == 50 and ci.level == 0.95


def test_constant_error_rate_per_utterance_gives_a_point():
    ci = bootstrap_wer([2, 4, 6], [10, 20, 30])  # every utterance at 20%, so every resample too
    assert ci.wer == pytest.approx(0.2) and ci.lo == pytest.approx(0.2) and ci.hi == pytest.approx(0.2)


def test_matches_a_loop_over_resamples():
    errors, words = synthetic(37, 0.15, seed=1)
    rng = np.random.default_rng(7)
    rates = []
    for _ in range(300):  # the definition, one resampled test set at a time
        idx = rng.integers(0, len(errors), size=len(errors))
        rates.append(errors[idx].sum() / words[idx].sum())
    lo, hi = np.quantile(rates, [0.025, 0.975])
    ci = bootstrap_wer(errors, words, n_resamples=300, seed=7)
    assert ci.wer == errors.sum() / words.sum()
    assert (ci.lo, ci.hi) == pytest.approx((lo, hi), abs=1e-12)


def test_chunking_does_not_change_the_result(monkeypatch):
    errors, words = synthetic(200, 0.1, seed=2)
    whole = bootstrap_wer(errors, words, n_resamples=1000, seed=3)
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", 2000)  # 10 resamples per chunk
    assert bootstrap_wer(errors, words, n_resamples=1000, seed=3) == whole


def test_interval_contains_the_true_wer():
    errors, words = synthetic(400, 0.12, seed=0)
    ci = bootstrap_wer(errors, words, seed=0)
    assert ci.lo < 0.12 < ci.hi
    assert ci.lo < ci.wer < ci.hi


def test_coverage_is_close_to_the_level():
    covered = 0
    for seed in range(100):
        errors, words = synthetic(150, 0.08, seed=seed)
        ci = bootstrap_wer(errors, words, n_resamples=400, seed=seed)
        covered += ci.lo <= 0.08 <= ci.hi
    assert 85 <= covered <= 100


def test_more_utterances_give_a_narrower_interval():
    small = bootstrap_wer(*synthetic(100, 0.1, seed=4), seed=0)
    large = bootstrap_wer(*synthetic(1600, 0.1, seed=4), seed=0)
    assert large.half_width < small.half_width / 2.5  # ~1/sqrt(16) = 1/4
    assert bootstrap_wer(*synthetic(100, 0.1, seed=4), seed=0, level=0.8).half_width < small.half_width


def test_seeded():
    errors, words = synthetic(60, 0.2, seed=5)
    assert bootstrap_wer(errors, words, seed=1) == bootstrap_wer(errors, words, seed=1)
    assert bootstrap_wer(errors, words, seed=1) != bootstrap_wer(errors, words, seed=2)


@pytest.mark.parametrize(
    ("errors", "words", "match"),
    [([], [], "no utterances"), ([1, 2], [3], "equal length"), ([1], [0], "no words"), ([-1], [3], "non-negative")],
)
def test_bad_input(errors, words, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_wer(errors, words)


def test_resamples_without_words_are_left_out():
    # Half the utterances are empty references with insertions; draws of only those are undefined.
    ci = bootstrap_wer([1, 0], [0, 5], n_resamples=2000, seed=0)
    assert ci.wer == pytest.approx(0.2) and np.isfinite([ci.lo, ci.hi]).all()
