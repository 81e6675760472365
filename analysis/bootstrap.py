"""Bootstrap confidence intervals of corpus WER.

Word errors within one utterance are not independent (one misheard word drags its neighbours), so
the resampling unit is the *utterance*: draw n utterances with replacement, compute the corpus WER
of the draw as ``sum(errors) / sum(ref_words)``, repeat, and read the interval off the percentiles
of those resampled WERs (the percentile bootstrap)::

    >>> import numpy as np
    >>> from analysis.bootstrap import bootstrap_wer
    >>> ci = bootstrap_wer(errors=[1, 0, 3, 2], ref_words=[10, 12, 9, 11], seed=0)
    >>> round(ci.wer, 4), ci.lo <= ci.wer <= ci.hi
    (0.1429, True)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Resample in chunks of at most this many drawn indices, so a 100k-utterance test set with
# 10k resamples never needs a 1e9-element matrix.
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class WERInterval:
    """Corpus WER (fraction) and its bootstrap interval [lo, hi] at ``level``."""

    wer: float
    lo: float
    hi: float
    level: float
    n_utterances: int
    n_resamples: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def bootstrap_wer(
    errors: Sequence[int] | np.ndarray,
    ref_words: Sequence[int] | np.ndarray,
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> WERInterval:
    """Percentile-bootstrap interval of corpus WER, resampling utterances (seeded, vectorised).

    ``errors[i]`` is utterance i's S+D+I count and ``ref_words[i]`` its reference length. A draw
    whose references hold no words at all has no defined WER and is left out of the percentiles.

    Example::

        >>> bootstrap_wer([0, 0, 0], [5, 7, 3]).hi
        0.0
    """
    e = np.asarray(errors, dtype=np.int64)
    n_words = np.asarray(ref_words, dtype=np.int64)
    if e.ndim != 1 or e.shape != n_words.shape:
        raise ValueError(f"errors and ref_words must be 1-D of equal length, got shapes {e.shape} and {n_words.shape}")
    if len(e) == 0:
        raise ValueError("no utterances: cannot compute a WER interval")
    if (e < 0).any() or (n_words < 0).any():
        raise ValueError("errors and ref_words must be non-negative counts")
    if n_words.sum() == 0:
        raise ValueError("the references hold no words: WER is undefined")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")

    rng = np.random.default_rng(seed)
    n = len(e)
    rows = max(1, _CHUNK_ELEMENTS // n)
    samples = np.empty(n_resamples, dtype=float)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))  # each row: one resampled test set
        num, den = e[idx].sum(axis=1), n_words[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            samples[start:stop] = np.where(den > 0, num / np.maximum(den, 1), np.nan)
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(samples, [alpha, 1 - alpha])
    return WERInterval(float(e.sum() / n_words.sum()), float(lo), float(hi), level, n, n_resamples)
