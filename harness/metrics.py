"""Word error rate with jiwer after normalisation, with substitution/deletion/insertion counts.

Two normalisers, both defined on every script (a word is a run of Unicode letters, marks, digits
and apostrophes; nothing a transcript says is deleted):

- ``librispeech``: LibriSpeech's transcript convention extended beyond ASCII: uppercase,
  punctuation and symbols become spaces, diacritics on *Latin* letters are dropped ("café" ->
  "CAFE", "łódź" -> "ŁODZ": LibriSpeech's own texts have none), every other script keeps its marks
  (Devanagari vowel signs, Thai tones). Scripts written without spaces between words (Han, kana,
  Thai, Lao, Khmer, Myanmar, Tibetan) are split into one token per character, so on them the
  "WER" is a character error rate (the mixed error rate of multilingual ASR papers).
- ``whisper``: Whisper's English text normaliser from transformers (unifies numbers and
  abbreviations: "1813" = "eighteen thirteen"). It is English-only (it deletes marks and rewrites
  English words), so a pair whose reference or hypothesis has letters outside the Latin script
  is normalised as ``librispeech`` does, lowercased. British/American spellings are unified only
  when transformers ships the spelling table, which 5.x does not (it lives in Whisper
  checkpoints' ``normalizer.json``), so "colour" and "color" stay different words.

"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import jiwer

from harness.registry import Registry

# Scripts that do not separate words with spaces: each character is a token.
_UNSPACED = re.compile(
    "([\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f])"
)
_SPACES = re.compile(r"\s+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'"})


def _is_latin(c: str) -> bool:
    o = ord(c)
    return o < 0x250 or 0x1E00 <= o < 0x1F00 or 0x2C60 <= o < 0x2C80 or 0xA720 <= o < 0xA800


def _has_non_latin_letters(text: str) -> bool:
    return any(unicodedata.category(c)[0] == "L" and not _is_latin(c) for c in text)


def _word_chars(text: str) -> str:
    """NFKC, Latin diacritics dropped, everything but letters/marks/digits/apostrophes -> space."""
    out: list[str] = []
    for c in unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)):
        cat = unicodedata.category(c)
        if cat[0] == "M":
            if out and _is_latin(out[-1]):
                continue  # a diacritic on a Latin letter
            out.append(c)
        elif cat[0] in "LN" or c == "'":
            out.append(c)
        else:
            out.append(" ")
    text = _UNSPACED.sub(r" \1 ", unicodedata.normalize("NFC", "".join(out)))
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))  # quotes, not apostrophes in words


def normalize_librispeech(text: str) -> str:
    """``"Hello, world -- it's me!"`` -> ``"HELLO WORLD IT'S ME"``; ``"café"`` -> ``"CAFE"``;
    ``"Привет, мир"`` -> ``"ПРИВЕТ МИР"``; ``"你好世界"`` -> ``"你 好 世 界"``."""
    return _word_chars(text).upper()


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
    """Whisper's English normaliser; text with non-Latin letters gets the script-safe one, lowercased."""
    if _has_non_latin_letters(text):
        return _word_chars(text).lower()
    return _whisper_normalizer()(text).strip()


NORMALISERS: Registry[Callable[[str], str]] = Registry("normaliser")
NORMALISERS.add("librispeech", normalize_librispeech)
NORMALISERS.add("whisper", normalize_whisper)


def _normalise_pair(ref: str, hyp: str, normaliser: str) -> tuple[str, str]:
    if normaliser == "whisper" and (_has_non_latin_letters(ref) or _has_non_latin_letters(hyp)):
        return _word_chars(ref).lower(), _word_chars(hyp).lower()  # one normaliser for both sides
    norm = NORMALISERS[normaliser]
    return norm(ref), norm(hyp)


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

    An empty normalised reference (one of punctuation only, or Whisper's fillers "uh", "hmm")
    counts its hypothesis words as insertions (jiwer rejects empty references, so these are scored
    by hand).
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if normaliser not in NORMALISERS:
        raise ValueError(NORMALISERS.unknown_message(normaliser))
    S = D = I = H = N = 0
    per_utt: list[UtteranceScore] = []
    for ref, hyp in zip(refs, hyps):
        r, h = _normalise_pair(ref, hyp, normaliser)
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
