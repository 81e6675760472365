"""JSONL manifests: one utterance per line, the interchange format of every data source.

A line looks like
    {"id": "1272-128104-0000", "audio": "audio/1272-128104-0000.flac",
     "text": "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES", "duration": 5.86, "speaker": "1272"}
Relative audio paths are relative to the manifest's own folder, so a corpus folder
can be moved or copied as a whole. Errors name the manifest file and the line.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from harness.atomic import replacing

from .audio import AudioError, load_audio

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


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest, validating every line; see the module docstring for the format."""
    path = Path(path)
    base = path.parent
    utts: list[Utterance] = []
    first_line_of: dict[str, int] = {}  # id -> line number, to name both lines of a duplicate
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue  # a trailing blank line is harmless
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(row, dict):
                raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in REQUIRED_KEYS if k not in row]
            if missing:
                raise ManifestError(f"{where}: missing required key(s) {', '.join(missing)}")

            utt_id, audio, text, duration = row["id"], row["audio"], row["text"], row["duration"]
            speaker = row.get("speaker")
            if not isinstance(utt_id, str) or not utt_id:
                raise ManifestError(f"{where}: 'id' must be a non-empty string, got {utt_id!r}")
            if not isinstance(audio, str) or not audio:
                raise ManifestError(f"{where}: 'audio' must be a non-empty path string, got {audio!r}")
            if not isinstance(text, str) or not text.strip():
                raise ManifestError(f"{where}: 'text' of {utt_id!r} is empty or whitespace-only")
            # bool is an int subclass; true/false as a duration is a bug, not 1 s / 0 s
            if isinstance(duration, bool) or not isinstance(duration, (int, float)) \
                    or not math.isfinite(duration) or duration < 0:
                raise ManifestError(f"{where}: 'duration' must be a non-negative number of seconds, got {duration!r}")
            if speaker is not None and not isinstance(speaker, str):
                raise ManifestError(f"{where}: 'speaker' must be a string or absent, got {speaker!r}")
            if utt_id in first_line_of:
                raise ManifestError(
                    f"{where}: duplicate id {utt_id!r} (first seen on line {first_line_of[utt_id]})"
                )
            first_line_of[utt_id] = lineno

            audio_path = Path(audio)
            if not audio_path.is_absolute():
                audio_path = base / audio_path
            utts.append(Utterance(id=utt_id, audio=str(audio_path), text=text,
                                  duration=float(duration), speaker=speaker))
    return utts


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
    """Return (utterance, reason) for every utterance whose audio is missing or unreadable.

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
                load_audio(u.audio)
            else:
                info = sf.info(u.audio)
                if info.frames <= 0:
                    problems.append((u, f"zero-length audio {u.audio}"))
        except AudioError as e:
            problems.append((u, str(e)))
        except (sf.LibsndfileError, RuntimeError) as e:
            problems.append((u, f"unreadable audio {u.audio} ({e})"))
    return problems
