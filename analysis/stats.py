"""The statistics of a finding: intervals across seeds, paired tests on shared test utterances, rates.

Every function returns an estimate with its interval, never a bare p-value; intervals are at ``level``
(default 95 %). The conventions:

- **Across seeds** (emergence step, dev accuracy, a run's final metric): the mean and its Student-t
  interval (:func:`mean_ci`); two arms are compared by Welch's t interval of the difference in means and
  an exact permutation test of it (:func:`mean_difference`), which needs no normality for its p-value.
- **WER on the same test utterances**: resampling units are utterances, never words (errors within an
  utterance are not independent). An arm pools its seeds: an utterance's errors are summed over the arm's
  runs, so the corpus WER of a draw is ``sum(errors) / sum(words)`` over every run of the arm
  (:func:`pooled_wer`). Two arms are compared by the paired bootstrap of the WER difference (Koehn 2004;
  Bisani and Ney 2004): the same resampled utterances for both arms (:func:`paired_wer_difference`).
- **Rates** (runs that emerged, runs that diverged): exact Clopper-Pearson interval for one arm
  (:func:`rate_ci`); Newcombe's hybrid-score interval of a difference and Fisher's exact test for two
  (:func:`rate_difference`).
- **Censoring**: a run that never emerged has no emergence step. It is counted at its last training step
  (:func:`censored_steps`), a lower bound on the step it would have emerged at; a difference computed that
  way is conservative when the slower arm is the censored one, and every result says how many runs were
  censored.

Known answers (``tests/analysis/test_stats.py``): identical arms give an interval containing 0, a planted
difference is found, intervals cover at their nominal rate.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.bootstrap import WERInterval, bootstrap_wer

_CHUNK_ELEMENTS = 4_000_000  # resampled indices held at once (see analysis.bootstrap)


@dataclass(frozen=True)
class Estimate:
    """One arm: ``value`` (a mean, a rate or a WER, as a fraction) and its interval [lo, hi] from ``n`` units."""

    value: float
    lo: float
    hi: float
    n: int
    sd: float = math.nan  # spread across seeds (sample standard deviation), where the units are seeds


@dataclass(frozen=True)
class Difference:
    """Arm A minus arm B: ``effect`` with its interval [lo, hi] and a two-sided ``p`` for "no difference"."""

    effect: float
    lo: float
    hi: float
    p: float
    method: str

    def contains_zero(self) -> bool:
        return not (self.hi < 0 or self.lo > 0)


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D sequence, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: every value must be finite (censor runs that never emerged first)")
    return x


def mean_ci(values: Sequence[float], *, level: float = 0.95) -> Estimate:
    """Mean across seeds and its Student-t interval; one value gives an unbounded interval (NaN ends)."""
    from scipy import stats

    _check_level(level)
    x = _finite(values, "mean_ci")
    if len(x) == 0:
        raise ValueError("mean_ci: no values")
    if len(x) == 1:
        return Estimate(float(x[0]), math.nan, math.nan, 1)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    m = float(x.mean())
    return Estimate(m, m - half, m + half, len(x), sd)


def mean_difference(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> Difference:
    """``mean(a) - mean(b)``: Welch's t interval, and the exact (or, beyond 10^5 splits, Monte Carlo)
    permutation test of the difference in means (seeded)."""
    from scipy import stats

    _check_level(level)
    x, y = _finite(a, "arm A"), _finite(b, "arm B")
    if len(x) == 0 or len(y) == 0:
        raise ValueError("mean_difference: each arm needs at least one value")
    effect = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Difference(effect, math.nan, math.nan, math.nan, "Welch t (needs >= 2 seeds an arm)")
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    if se == 0:  # every seed of both arms gave the same value: the difference is exact
        p = 1.0 if effect == 0 else 0.0
        return Difference(effect, effect, effect, p, "Welch t (no spread)")
    df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    perm = stats.permutation_test(
        (x, y), lambda u, v, axis: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        permutation_type="independent", n_resamples=100_000, vectorized=True, rng=0,
    )
    return Difference(effect, effect - half, effect + half, float(perm.pvalue), "Welch t; permutation p")


def censored_steps(steps: Sequence[float], last_steps: Sequence[float]) -> tuple[np.ndarray, int]:
    """Emergence steps with every never-emerged run (NaN) counted at its last step; returns (steps, n censored)."""
    s, last = np.asarray(steps, dtype=float), np.asarray(last_steps, dtype=float)
    if s.shape != last.shape:
        raise ValueError(f"{len(s)} emergence steps but {len(last)} last steps")
    censored = np.isnan(s)
    if np.isnan(last[censored]).any():
        raise ValueError("a run that never emerged has no last step to be counted at")
    return np.where(censored, last, s), int(censored.sum())


def pooled_wer(errors: np.ndarray, ref_words: np.ndarray, *, level: float = 0.95, n_resamples: int = 2000,
               seed: int = 0) -> WERInterval:
    """Corpus WER of an arm over its runs (rows) on the same utterances (columns), with the utterance
    bootstrap interval: an utterance's errors and words are summed over the runs before resampling."""
    e, w = _per_run(errors, ref_words)
    return bootstrap_wer(e.sum(axis=0), w.sum(axis=0), level=level, n_resamples=n_resamples, seed=seed)


def _per_run(errors: np.ndarray, ref_words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e, w = np.atleast_2d(np.asarray(errors, dtype=np.int64)), np.atleast_2d(np.asarray(ref_words, dtype=np.int64))
    if e.shape != w.shape:
        raise ValueError(f"errors {e.shape} and ref_words {w.shape} must have one shape (runs, utterances)")
    if e.shape[1] == 0:
        raise ValueError("no utterances")
    if (e < 0).any() or (w < 0).any():
        raise ValueError("errors and ref_words must be non-negative counts")
    return e, w


def paired_wer_difference(
    errors_a: np.ndarray, errors_b: np.ndarray, ref_words: np.ndarray, *,
    level: float = 0.95, n_resamples: int = 2000, seed: int = 0,
) -> Difference:
    """WER(A) - WER(B) on the same utterances: the paired bootstrap (each draw resamples utterances once
    and scores both arms on it). ``errors_x`` are (runs, utterances) of one arm, ``ref_words`` the
    utterances' reference lengths. ``p`` is twice the smaller tail of the resampled differences at 0."""
    _check_level(level)
    words = np.asarray(ref_words, dtype=np.int64)
    n_a, n_b = np.atleast_2d(errors_a).shape[1], np.atleast_2d(errors_b).shape[1]
    if not n_a == n_b == words.shape[-1]:
        raise ValueError(f"the arms were scored on {n_a} and {n_b} utterances with {words.shape[-1]} reference "
                         "lengths: not paired")
    ea, wa = _per_run(errors_a, np.broadcast_to(words, np.atleast_2d(errors_a).shape))
    eb, wb = _per_run(errors_b, np.broadcast_to(words, np.atleast_2d(errors_b).shape))
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    ua, ub, uwa, uwb = ea.sum(0), eb.sum(0), wa.sum(0), wb.sum(0)  # per utterance, summed over each arm's runs
    if uwa.sum() == 0 or uwb.sum() == 0:
        raise ValueError("the references hold no words: WER is undefined")
    effect = float(ua.sum() / uwa.sum() - ub.sum() / uwb.sum())
    rng = np.random.default_rng(seed)
    n = len(ua)
    rows = max(1, _CHUNK_ELEMENTS // n)
    diffs = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        da, db = uwa[idx].sum(1), uwb[idx].sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            diffs[start:stop] = np.where((da > 0) & (db > 0), ua[idx].sum(1) / np.maximum(da, 1)
                                         - ub[idx].sum(1) / np.maximum(db, 1), np.nan)
    diffs = diffs[~np.isnan(diffs)]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return Difference(effect, float(lo), float(hi), p, "paired bootstrap over utterances")


def rate_ci(k: int, n: int, *, level: float = 0.95) -> Estimate:
    """``k`` of ``n`` runs: the rate and its exact Clopper-Pearson interval."""
    from scipy import stats

    _check_level(level)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"rate_ci: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return Estimate(k / n, float(ci.low), float(ci.high), n)


def rate_difference(k_a: int, n_a: int, k_b: int, n_b: int, *, level: float = 0.95) -> Difference:
    """Rate A minus rate B: Newcombe's hybrid-score interval (from the two Wilson intervals) and Fisher's
    exact test."""
    from scipy import stats

    _check_level(level)
    for k, n in ((k_a, n_a), (k_b, n_b)):
        if n < 1 or not 0 <= k <= n:
            raise ValueError(f"rate_difference: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    pa, pb = k_a / n_a, k_b / n_b
    wa = stats.binomtest(k_a, n_a).proportion_ci(confidence_level=level, method="wilson")
    wb = stats.binomtest(k_b, n_b).proportion_ci(confidence_level=level, method="wilson")
    d = pa - pb
    lo = d - math.sqrt((pa - wa.low) ** 2 + (wb.high - pb) ** 2)
    hi = d + math.sqrt((wa.high - pa) ** 2 + (pb - wb.low) ** 2)
    p = float(stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue)
    return Difference(d, float(lo), float(hi), p, "Newcombe interval; Fisher exact p")


def verdict(diff: Difference, expect: str) -> str:
    """``reproduced`` when the whole interval lies on the expected side of 0, ``refuted`` when it lies on the
    other side, ``inconclusive`` when it spans 0 (or is unknown). ``expect``: ``lower`` or ``higher`` (A vs B)."""
    if expect not in ("lower", "higher"):
        raise ValueError(f"expect must be 'lower' or 'higher', got {expect!r}")
    if math.isnan(diff.lo) or math.isnan(diff.hi) or diff.contains_zero():
        return "inconclusive"
    below = diff.hi < 0
    return "reproduced" if below == (expect == "lower") else "refuted"
