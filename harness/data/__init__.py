"""Data layer of the harness: audio loading, manifests, LibriSpeech, synthetic speech, batching."""

from .audio import SAMPLE_RATE, AudioError, audio_duration, load_audio, save_audio
from .batching import batches_by_count, batches_by_duration
from .librispeech import LibriSpeechError, librispeech_splits, read_librispeech
from .manifest import ManifestError, Utterance, check_audio_files, read_manifest, write_manifest
from harness.data.synth import (
    VOICES,
    SynthesisError,
    default_text_source,
    load_sentences,
    normalize_text,
    plan_corpus,
    synthesize_corpus,
)

__all__ = [
    "SAMPLE_RATE",
    "VOICES",
    "AudioError",
    "LibriSpeechError",
    "ManifestError",
    "SynthesisError",
    "Utterance",
    "audio_duration",
    "batches_by_count",
    "batches_by_duration",
    "check_audio_files",
    "default_text_source",
    "librispeech_splits",
    "load_audio",
    "load_sentences",
    "normalize_text",
    "plan_corpus",
    "read_librispeech",
    "read_manifest",
    "save_audio",
    "synthesize_corpus",
    "write_manifest",
]
