"""Synthetic corpus: text normalisation, sentence loading, planning, and real TTS engines.

The synthesis tests run the real engines (flite, espeak-ng, piper) and are skipped,
with the reason, only on a machine where an engine is not installed.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from harness.data.manifest import read_manifest
from harness.data.synth import (
    DEFAULT_UNSEEN_VOICES,
    DEFAULT_VOICES,
    VOICES,
    default_text_source,
    load_sentences,
    missing_voices,
    normalize_text,
    plan_corpus,
    split_sentences,
    synthesize_corpus,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TSV = SHARED / "texts" / "librispeech-dev-clean-2.tsv"


@pytest.mark.parametrize("raw,expected", [
    ("Mr. Darcy's 'poor Miss Taylor.'", "MISTER DARCY'S POOR MISS TAYLOR"),
    ("--at any rate, it _must_ be so!", "AT ANY RATE IT MUST BE SO"),
    ("The café was naïve \u2019tis o\u2019clock", "THE CAFE WAS NAIVE TIS O'CLOCK"),
    ("Bread & butter", "BREAD AND BUTTER"),
    ("It cost 5 pounds.", None),
    ("Fifty per cent (50%)", None),
    ("Ægir sailed", None),
    ("  ...  ", None),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_split_sentences_keeps_titles_and_paragraphs():
    text = ("Mr. Knightley came. He said \"Well!\" and left.\nThen he\nreturned?\n\n"
            "A new paragraph without stop\n\nLast.")
    assert split_sentences(text) == [
        "mister Knightley came.", 'He said "Well!"', "and left.", "Then he returned?",
        "A new paragraph without stop", "Last."]


def test_load_sentences_tsv():
    sentences = load_sentences(TSV)
    assert len(sentences) > 100
    assert all(4 <= len(s.split()) <= 25 for s in sentences)
    assert all(normalize_text(s) == s for s in sentences)
    assert len(set(sentences)) == len(sentences)
    longer = load_sentences(TSV, min_words=1, max_words=1000)
    assert len(longer) > len(sentences)


def test_load_sentences_plain_text(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("CHAPTER I\n\nIt was a bright cold day in April, and the clocks were striking thirteen. "
                    "Mrs. Smith had 3 cats. She walked home slowly through the quiet old town.\n"
                    "She walked home slowly through the quiet old town.\n", encoding="utf-8")
    assert load_sentences(path) == [
        "IT WAS A BRIGHT COLD DAY IN APRIL AND THE CLOCKS WERE STRIKING THIRTEEN",
        "SHE WALKED HOME SLOWLY THROUGH THE QUIET OLD TOWN"]


def test_load_sentences_tsv_without_text_column(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("id\tsentence\n1\tHELLO THERE MY FRIEND\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:1: .*'text' column"):
        load_sentences(path)


def test_default_text_source():
    try:
        paths = default_text_source()
    except FileNotFoundError as e:
        assert "r-cran-janeaustenr" in str(e)  # the error says what to install
        pytest.skip(f"default text package not installed: {e}")
    sentences = load_sentences(paths[0])
    assert len(sentences) > 10_000
    assert any(s.startswith("MISTER DARCY") for s in sentences)
    assert all(normalize_text(s) == s and 4 <= len(s.split()) <= 25 for s in sentences)


NUMBERS = ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "TEN", "ELEVEN", "TWELVE",
           "THIRTEEN", "FOURTEEN"]
SENTENCES = [f"SENTENCE NUMBER {w} IS HERE" for w in NUMBERS]


def test_plan_is_deterministic_disjoint_and_balanced():
    kw = {"voices": ["flite-slt", "espeak-en-us-m3"], "unseen_voices": ["flite-kal16"],
          "n_train": 6, "n_dev": 2, "n_test": 2, "n_test_unseen": 2}
    plan = plan_corpus(SENTENCES, seed=3, **kw)
    assert plan == plan_corpus(list(reversed(SENTENCES)), seed=3, **kw)  # input order is irrelevant
    assert plan != plan_corpus(SENTENCES, seed=4, **kw)
    assert {s: len(items) for s, items in plan.items()} == {"train": 6, "dev": 2, "test": 2, "test_unseen": 2}
    texts = [t for items in plan.values() for t, _ in items]
    assert len(set(texts)) == len(texts)  # no sentence in two splits
    assert sorted(v for _, v in plan["train"]) == ["espeak-en-us-m3"] * 3 + ["flite-slt"] * 3
    assert {v for _, v in plan["test_unseen"]} == {"flite-kal16"}
    # more training data leaves the evaluation splits unchanged
    bigger = plan_corpus(SENTENCES, seed=3, **{**kw, "n_train": 8})
    assert all(bigger[s] == plan[s] for s in ("dev", "test", "test_unseen"))


def test_plan_errors():
    kw = {"n_train": 2, "n_dev": 1, "n_test": 1, "n_test_unseen": 1}
    with pytest.raises(ValueError, match="must not be used in training"):
        plan_corpus(SENTENCES, voices=["flite-slt"], unseen_voices=["flite-slt"], **kw)
    with pytest.raises(ValueError, match="unknown voice"):
        plan_corpus(SENTENCES, voices=["no-such-voice"], unseen_voices=["flite-kal16"], **kw)
    with pytest.raises(ValueError, match="need 20 distinct sentences"):
        plan_corpus(SENTENCES, voices=["flite-slt"], unseen_voices=["flite-kal16"],
                    n_train=17, n_dev=1, n_test=1, n_test_unseen=1)


def test_default_voice_lists():
    assert set(DEFAULT_VOICES).isdisjoint(DEFAULT_UNSEEN_VOICES)
    assert set(DEFAULT_VOICES) | set(DEFAULT_UNSEEN_VOICES) <= set(VOICES)


def skip_if_missing(voices):
    missing = missing_voices(voices)
    if missing:
        pytest.skip("TTS engine not installed: " + "; ".join(f"{v}: {r}" for v, r in missing.items()))


def check_audio(path: str) -> float:
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), path
    x, _ = sf.read(path, dtype="float32")
    rms = float(np.sqrt(np.mean(x**2)))
    assert rms > 0.01, f"{path} is (nearly) silent, rms={rms}"
    assert 0.5 < info.duration < 15
    return info.duration


def test_synthesize_tiny_corpus(tmp_path):
    voices, unseen = ["flite-slt", "espeak-en-us-m3"], ["flite-kal16"]
    skip_if_missing(voices + unseen)
    sentences = load_sentences(TSV, max_words=10)[:6]
    kw = {"voices": voices, "unseen_voices": unseen, "n_train": 3, "n_dev": 1, "n_test": 1, "n_test_unseen": 1,
          "seed": 11, "progress": False}
    manifests = synthesize_corpus(sentences, tmp_path / "a", **kw)
    assert sorted(manifests) == ["dev", "test", "test_unseen", "train"]

    seen_texts = []
    for split, path in manifests.items():
        utts = read_manifest(path)
        for u in utts:
            assert u.duration == pytest.approx(check_audio(u.audio))
            assert u.speaker in (unseen if split == "test_unseen" else voices)
            assert u.text in sentences
            seen_texts.append(u.text)
    assert sorted(seen_texts) == sorted(sentences)
    # audio paths are stored relative to the corpus folder
    first = json.loads(manifests["train"].read_text().splitlines()[0])
    assert first["audio"].startswith("audio/")

    # Same seed, fresh folder, two worker processes: the same assignment of texts to voices
    again = synthesize_corpus(sentences, tmp_path / "b", workers=2, **kw)

    def key(path):
        return [(u.id, u.text, u.speaker, Path(u.audio).name) for u in read_manifest(path)]

    assert all(key(manifests[s]) == key(again[s]) for s in manifests)

    # A re-run in the same folder reuses the files instead of synthesizing again
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "audio").rglob("*.flac")}
    synthesize_corpus(sentences, tmp_path / "a", **kw)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "audio").rglob("*.flac")} == mtimes


def test_piper_voice(tmp_path):
    skip_if_missing(["piper-joe"])
    path = tmp_path / "piper.flac"
    VOICES["piper-joe"]().synthesize("IT WAS A BRIGHT COLD DAY IN APRIL", path)
    check_audio(str(path))


def test_piper_audio_is_a_function_of_the_text(tmp_path):
    """The neural voice samples noise; the same sentence gives the same bytes whatever was spoken
    before it, in another instance, and in another process (so two clones build one corpus)."""
    import subprocess
    import sys

    skip_if_missing(["piper-joe"])
    text, other = "FOUR SEVEN ONE NINE", "IT WAS A BRIGHT COLD DAY IN APRIL"
    first, second = VOICES["piper-joe"](), VOICES["piper-joe"]()
    first.synthesize(text, tmp_path / "a.flac")
    first.synthesize(other, tmp_path / "other.flac")
    first.synthesize(text, tmp_path / "b.flac")
    second.synthesize(text, tmp_path / "c.flac")
    subprocess.run([sys.executable, "-c", "import sys; from harness.data.synth import VOICES; "
                    "VOICES['piper-joe']().synthesize(sys.argv[1], sys.argv[2])", text, str(tmp_path / "d.flac")],
                   check=True)
    audio = {name: (tmp_path / f"{name}.flac").read_bytes() for name in "abcd"}
    assert audio["a"] == audio["b"] == audio["c"] == audio["d"]
    assert (tmp_path / "other.flac").read_bytes() != audio["a"]


@pytest.mark.parametrize("name", sorted(n for n in VOICES if n != "piper-joe"))
def test_each_command_voice(tmp_path, name):
    skip_if_missing([name])
    path = tmp_path / f"{name}.wav"
    VOICES[name]().synthesize("SHE WALKED HOME THROUGH THE QUIET TOWN", path)
    check_audio(str(path))
