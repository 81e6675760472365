"""Text normalisation and WER with substitution / deletion / insertion counts."""
from __future__ import annotations

import pytest

from harness.metrics import WERResult, normalize_librispeech, normalize_whisper, word_errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, world -- it's me!", "HELLO WORLD IT'S ME"),
        ("MISTER QUILTER IS THE APOSTLE", "MISTER QUILTER IS THE APOSTLE"),  # LibriSpeech text is a fixed point
        ("don\u2019t  stop", "DON'T STOP"),  # typographic apostrophe
        ("'quoted' words", "QUOTED WORDS"),  # quotes go, apostrophes inside words stay
        ("the well-known \t tale\n", "THE WELL KNOWN TALE"),
        ("room 101.", "ROOM 101"),
        ("caf\u00e9 na\u00efve", "CAFE NAIVE"),  # accents are stripped, letters kept
        ("  ...!?  ", ""),
        ("", ""),
    ],
)
def test_normalize_librispeech(text: str, expected: str) -> None:
    assert normalize_librispeech(text) == expected


def test_normalize_whisper() -> None:
    out = normalize_whisper("Mr. Smith's house, isn't it?")
    assert out == "mister smith is house is not it"  # abbreviations and contractions expanded
    assert normalize_whisper("twenty five dollars") == normalize_whisper("$25") == "$25"  # numbers unified
    assert normalize_whisper("HELLO   World!") == "hello world"


def _wer(ref: str, hyp: str, **kw) -> WERResult:
    return word_errors([ref], [hyp], **kw)[0]


@pytest.mark.parametrize(
    ("ref", "hyp", "s", "d", "i", "n"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 0, 0, 0, 6),
        ("the cat sat on the mat", "the cat sit on the mat", 1, 0, 0, 6),
        ("the cat sat on the mat", "the cat on the mat", 0, 1, 0, 6),
        ("the cat sat on the mat", "the black cat sat on the mat", 0, 0, 1, 6),
        ("the cat sat on the mat", "the cat sit on mat", 1, 1, 0, 6),
        ("a b c", "x y z w", 3, 0, 1, 3),
        ("a b c", "", 0, 3, 0, 3),
    ],
)
def test_wer_counts(ref: str, hyp: str, s: int, d: int, i: int, n: int) -> None:
    r = _wer(ref, hyp)
    assert (r.substitutions, r.deletions, r.insertions, r.ref_words) == (s, d, i, n)
    assert r.hits == n - s - d
    assert r.wer == pytest.approx((s + d + i) / n)


def test_wer_is_computed_after_normalisation() -> None:
    assert _wer("HELLO WORLD IT'S ME", "hello, world -- it\u2019s me!").wer == 0.0
    assert _wer("MISTER SMITH PAID TWENTY FIVE DOLLARS", "Mr. Smith paid $25.", normaliser="whisper").wer == 0.0
    assert _wer("MISTER SMITH PAID TWENTY FIVE DOLLARS", "Mr. Smith paid $25.", normaliser="librispeech").wer == pytest.approx(4 / 6)


def test_corpus_wer_pools_errors_and_keeps_per_utterance_scores() -> None:
    refs = ["a b c d", "a b", "one two three four five six"]
    hyps = ["a b c d", "c", "one two three four five six seven"]
    wer, per_utt = word_errors(refs, hyps)
    assert (wer.substitutions, wer.deletions, wer.insertions, wer.ref_words) == (1, 1, 1, 12)
    assert wer.wer == pytest.approx(3 / 12)  # not the mean of per-utterance rates (0, 1, 1/6)
    assert [(u.errors, u.ref_words) for u in per_utt] == [(0, 4), (2, 2), (1, 6)]


def test_empty_reference() -> None:
    # Nothing to say and nothing said: no error.
    wer, per_utt = word_errors([""], [""])
    assert wer.wer == 0.0 and wer.ref_words == 0 and per_utt[0].errors == 0
    # Nothing to say but words said: each is an insertion; with no reference words at all WER is 1.
    wer, per_utt = word_errors(["...!"], ["hello there"])
    assert (wer.insertions, wer.ref_words, wer.wer) == (2, 0, 1.0)
    assert (per_utt[0].errors, per_utt[0].ref_words) == (2, 0)
    # Mixed with normal utterances the insertions count against the pooled reference words.
    wer, per_utt = word_errors(["a b", ""], ["a b", "x"])
    assert (wer.insertions, wer.ref_words, wer.wer) == (1, 2, 0.5)


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_errors(["a", "b"], ["a"])


def test_as_metrics() -> None:
    wer, _ = word_errors(["a b c d"], ["a x c d e"])
    m = wer.as_metrics("test/clean")
    assert m == {
        "test/clean/wer": 0.5,
        "test/clean/sub_rate": 0.25,
        "test/clean/del_rate": 0.0,
        "test/clean/ins_rate": 0.25,
        "test/clean/ref_words": 4.0,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Привет, мир!", "ПРИВЕТ МИР"),  # Cyrillic: the old normaliser returned ""
        ("łódź wrocław", "ŁODZ WROCŁAW"),  # Latin diacritics dropped, letters kept (old: "ODZ WROC AW")
        ("你好，世界", "你 好 世 界"),  # a script without spaces: one token per character (old: "")
        ("नमस्ते दुनिया", "नमस्ते दुनिया"),  # Devanagari keeps its vowel signs and virama
        ("ＡＢＣ　１２３", "ABC 123"),  # full-width forms (NFKC)
        ("Straße", "STRASSE"),
    ],
)
def test_normalize_librispeech_keeps_every_script(text: str, expected: str) -> None:
    assert normalize_librispeech(text) == expected


@pytest.mark.parametrize("normaliser", ["librispeech", "whisper"])
@pytest.mark.parametrize(
    ("ref", "hyp"),
    [("Привет мир", "пока мир друг"), ("你好世界", "你们好"), ("नमस्ते दुनिया", "नमस्कार")],
)
def test_wrong_non_latin_hypothesis_is_not_scored_zero(normaliser: str, ref: str, hyp: str) -> None:
    """The old normalisers emptied non-Latin references (and the English one emptied Devanagari
    signs), so a wrong hypothesis scored 0 % WER."""
    r = _wer(ref, hyp, normaliser=normaliser)
    assert r.ref_words > 0 and r.wer > 0
    assert _wer(ref, ref, normaliser=normaliser).wer == 0.0


def test_chinese_is_scored_per_character() -> None:
    r = _wer("你好世界", "你们好世界")
    assert (r.ref_words, r.insertions, r.substitutions, r.deletions) == (4, 1, 0, 0)


def test_unknown_normaliser_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown normaliser 'englsh'.*librispeech"):
        _wer("a", "a", normaliser="englsh")
