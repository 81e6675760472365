"""Word error rate with jiwer after normalisation, with substitution/deletion/insertion counts.

Two normalisers: ``librispeech`` (uppercase, letters/digits/apostrophes only, collapsed spaces:
LibriSpeech's own transcript convention) and ``whisper`` (Whisper's English text normaliser from
transformers, which also unifies numbers and abbreviations; British/American spellings only when
transformers ships the spelling table, which 5.x does not: it lives in Whisper checkpoints'
``normalizer.json``, so "colour" and "color" stay different words).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import jiwer

_NON_WORD = re.compile(r"[^A-Z0-9' ]+")
_SPACES = re.compile(r"\s+")


def normalize_librispeech(text: str) -> str:
    """``"Hello, world -- it's me!"`` -> ``"HELLO WORLD IT'S ME"``; ``"café"`` -> ``"CAFE"``."""
    # Strip diacritics first: otherwise "café" would lose its last letter and "naïve" split in two.
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = _NON_WORD.sub(" ", text.upper().replace("\u2019", "'"))
    text = " ".join(w.strip("'") for w in text.split())  # quotes, not apostrophes inside words
    return _SPACES.sub(" ", text).strip()


@lru_cache(maxsize=1)
def _whisper_normalizer() -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    try:
        from transformers.models.whisper.english_normalizer import ENGLISH_SPELLING_NORMALIZER  # type: ignore
    except ImportError:  # older/newer layouts keep the spelling table elsewhere
        ENGLISH_SPELLING_NORMALIZER = {}
    try:
        return EnglishTextNormalizer(ENGLISH_SPELLING_NORMALIZER)
    except TypeError:  # pragma: no cover - signature drift
        return BasicTextNormalizer()


def normalize_whisper(text: str) -> str:
    return _whisper_normalizer()(text).strip()


NORMALISERS: dict[str, Callable[[str], str]] = {"librispeech": normalize_librispeech, "whisper": normalize_whisper}


@dataclass(frozen=True)
class WERResult:
    wer: float  # (S + D + I) / N, as a fraction
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        n = max(self.ref_words, 1)
        return {
            f"{prefix}/wer": self.wer,
            f"{prefix}/sub_rate": self.substitutions / n,
            f"{prefix}/del_rate": self.deletions / n,
            f"{prefix}/ins_rate": self.insertions / n,
            f"{prefix}/ref_words": float(self.ref_words),
        }


@dataclass(frozen=True)
class UtteranceScore:
    errors: int  # S + D + I for this utterance
    ref_words: int


def word_errors(refs: Sequence[str], hyps: Sequence[str], *, normaliser: str = "librispeech") -> tuple[WERResult, list[UtteranceScore]]:
    """Corpus WER over normalised texts, plus per-utterance error counts (for bootstrap intervals).

    An empty normalised reference counts its hypothesis words as insertions (jiwer rejects empty
    references, so these are scored by hand).
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    norm = NORMALISERS[normaliser]
    S = D = I = H = N = 0
    per_utt: list[UtteranceScore] = []
    for ref, hyp in zip(refs, hyps):
        r, h = norm(ref), norm(hyp)
        if not r:
            ins = len(h.split())
            I += ins
            per_utt.append(UtteranceScore(ins, 0))
            continue
        out = jiwer.process_words(r, h)
        S, D, I, H = S + out.substitutions, D + out.deletions, I + out.insertions, H + out.hits
        n = out.hits + out.substitutions + out.deletions
        N += n
        per_utt.append(UtteranceScore(out.substitutions + out.deletions + out.insertions, n))
    wer = (S + D + I) / N if N else float(I > 0)
    return WERResult(wer, S, D, I, H, N), per_utt
