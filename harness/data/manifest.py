"""JSONL manifests: one utterance per line, the interchange format of every data source.

A line looks like
    {"id": "1272-128104-0000", "audio": "audio/1272-128104-0000.flac",
     "text": "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES", "duration": 5.86, "speaker": "1272"}
Relative audio paths are relative to the manifest's own folder, so a corpus folder
can be moved or copied as a whole. Errors name the manifest file and the line.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf

from harness.atomic import replacing
from harness.config import show

from .audio import SAMPLE_RATE, AudioError, duration_disagreement, load_audio

REQUIRED_KEYS = ("id", "audio", "text", "duration")


@dataclass(frozen=True)
class Utterance:
    """One transcribed recording. `audio` is a path usable from the current directory."""

    id: str
    audio: str
    text: str
    duration: float
    speaker: str | None = None


class ManifestError(Exception):
    """A manifest that is malformed; the message names the file and the line."""


MAX_LINE_CHARS = 1 << 20
"""A manifest line is at most this long (an utterance's row is ~200 characters)."""


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest, validating every line; see the module docstring for the format. A Lhotse
    CutSet or SupervisionSet is read as well (:mod:`harness.data.lhotse_manifests`).

    Every fault is a :class:`ManifestError` naming the file and the line (a missing file is a
    ``FileNotFoundError``): malformed or non-UTF-8 lines, a key written twice in one object, values
    of the wrong type, non-finite or negative durations, duplicate ids, lines over
    :data:`MAX_LINE_CHARS`. A byte-order mark at the start of the file is ignored.
    """
    path = Path(path)
    from harness.data.lhotse_manifests import lhotse_kind, read_lhotse  # a Lhotse CutSet or SupervisionSet

    kind = lhotse_kind(path) if path.is_file() else None
    if kind is not None:
        return read_lhotse(path, kind)
    utts: list[Utterance] = []
    first_line_of: dict[str, int] = {}  # id -> line number, to name both lines of a duplicate
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        utt = _utterance(_parse_line(line, where), path.parent, where)
        if utt.id in first_line_of:
            raise ManifestError(f"{where}: duplicate id {utt.id!r} (first seen on line {first_line_of[utt.id]})")
        first_line_of[utt.id] = lineno
        utts.append(utt)
    return utts


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line, each read with a bounded length."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno in itertools.count(1):
                line = f.readline(MAX_LINE_CHARS + 1)
                if not line:
                    return
                if len(line) > MAX_LINE_CHARS:
                    raise ManifestError(f"{path}:{lineno}: line longer than {MAX_LINE_CHARS} characters")
                if line.strip():  # a trailing blank line is harmless
                    yield lineno, line
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}:{_undecodable_line(path)}: not UTF-8 text ({e.reason})") from None
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror or e}") from None


def _undecodable_line(path: Path) -> int | str:
    """The number of the first line that is not UTF-8 (text files decode in blocks, not lines)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(4 * MAX_LINE_CHARS + 4), b""), start=1):
            try:
                raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                return lineno
    return "?"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:
            raise ManifestError(f"key {key!r} written twice (JSON would silently keep only the last value)")
        row[key] = value
    return row


def _parse_line(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None
    except (ValueError, RecursionError) as e:  # an int of 5000 digits; nesting too deep for the parser
        raise ManifestError(f"{where}: unreadable JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ManifestError(f"{where}: missing required key(s) {', '.join(missing)}")
    return row


def _string(row: dict[str, Any], key: str, where: str, what: str) -> str | None:
    """``row[key]`` if it is a string that UTF-8 can hold (no lone surrogate such as ``\\ud800``)."""
    value = row.get(key)
    if value is None and key == "speaker":
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{where}: {key!r} must be {what}, got {show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"{where}: {key!r} is not valid Unicode (a lone surrogate), got {show(value)}") from None
    return value


def _utterance(row: dict[str, Any], base: Path, where: str) -> Utterance:
    utt_id = _string(row, "id", where, "a non-empty string")
    audio = _string(row, "audio", where, "a non-empty path string")
    text = _string(row, "text", where, "a non-empty string")
    speaker = _string(row, "speaker", where, "a string or absent")
    if not utt_id:
        raise ManifestError(f"{where}: 'id' must be a non-empty string, got {utt_id!r}")
    if not audio or "\0" in audio:
        raise ManifestError(
            f"{where}: 'audio' must be a non-empty path string without NUL characters, got {show(audio)}")
    if not text.strip():
        raise ManifestError(f"{where}: 'text' of {utt_id!r} is empty or whitespace-only")
    duration = row["duration"]
    seconds = None
    # bool is an int subclass; true/false as a duration is a bug, not 1 s / 0 s
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        try:
            seconds = float(duration)
        except OverflowError:  # an int beyond any float
            seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ManifestError(f"{where}: 'duration' must be a non-negative number of seconds, got {show(duration)}")
    audio_path = Path(audio)
    if not audio_path.is_absolute():
        audio_path = base / audio_path
    return Utterance(id=utt_id, audio=str(audio_path), text=text, duration=seconds, speaker=speaker)


def write_manifest(path: str | os.PathLike, utts: list[Utterance]) -> None:
    """Write utterances as JSONL, atomically (temporary file, then rename).

    Audio paths inside the manifest's folder are written relative to it; others are
    written absolute. Duplicate ids are refused here so that a bad manifest is never
    produced in the first place.
    """
    path = Path(path)
    base = path.parent.resolve()
    seen: set[str] = set()
    lines = []
    for u in utts:
        if u.id in seen:
            raise ManifestError(f"{path}: refusing to write duplicate id {u.id!r}")
        seen.add(u.id)
        audio = Path(u.audio).resolve()
        rel = audio.relative_to(base).as_posix() if audio.is_relative_to(base) else str(audio)
        row = {"id": u.id, "audio": rel, "text": u.text, "duration": u.duration}
        if u.speaker is not None:
            row["speaker"] = u.speaker
        lines.append(json.dumps(row, ensure_ascii=False))

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def check_audio_files(utts: list[Utterance], *, decode: bool = False) -> list[tuple[Utterance, str]]:
    """Return (utterance, reason) for every utterance whose audio is missing or unreadable, or
    whose manifest ``duration`` disagrees with the audio's.

    By default only the header is read (fast enough for a whole corpus); decode=True
    also decodes every file with load_audio, which catches truncated or NaN audio.
    """
    problems: list[tuple[Utterance, str]] = []
    for u in utts:
        if not os.path.isfile(u.audio):
            problems.append((u, f"missing audio file {u.audio}"))
            continue
        try:
            if decode:
                actual = len(load_audio(u.audio)) / SAMPLE_RATE
            else:
                info = sf.info(u.audio)
                if info.frames <= 0:
                    problems.append((u, f"zero-length audio {u.audio}"))
                    continue
                actual = info.frames / info.samplerate
            if (why := duration_disagreement(u.duration, actual)) is not None:
                problems.append((u, why))
        except AudioError as e:
            problems.append((u, str(e)))
        except (sf.LibsndfileError, RuntimeError) as e:
            problems.append((u, f"unreadable audio {u.audio} ({e})"))
    return problems
