"""Synthetic speech corpus: book sentences spoken by several offline TTS voices.

The corpus gives the harness a training set whose speakers are fully controlled:
train/dev/test are spoken by the training voices, and `test_unseen` only by voices
that never occur in training, which measures generalisation to new speakers.

One module a piece:
  - :mod:`~.text`: LibriSpeech-style normalisation, sentence splitting, `load_sentences`,
    `default_text_source` (Jane Austen's novels from the Debian package r-cran-janeaustenr)
  - :mod:`~.voices`: one class per engine, one line per voice, registered by name in VOICES
  - :mod:`~.corpus`: `plan_corpus` decides deterministically which sentence goes to which
    split and voice
    and `synthesize_corpus` runs the voices (optionally in a process pool) and writes
    one JSONL manifest per split

Audio is written as 16 kHz mono 16-bit FLAC under out_dir/audio/<voice>/, named by a
hash of (voice, text); a re-run, or a run with more training sentences, therefore
reuses every file that is already there.
"""
from harness.data.synth.corpus import SPLITS, plan_corpus, synthesize_corpus
from harness.data.synth.errors import SynthesisError
from harness.data.synth.text import DEFAULT_TEXT_PACKAGE, default_text_source, load_sentences, normalize_text, split_sentences
from harness.data.synth.voices import DEFAULT_UNSEEN_VOICES, DEFAULT_VOICES, VOICES, Voice, missing_voices

__all__ = [
    "DEFAULT_TEXT_PACKAGE", "DEFAULT_UNSEEN_VOICES", "DEFAULT_VOICES", "SPLITS", "VOICES", "SynthesisError", "Voice",
    "default_text_source", "load_sentences", "missing_voices", "normalize_text", "plan_corpus", "split_sentences",
    "synthesize_corpus",
]
