"""Reader for the LibriSpeech distribution layout.

    LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

Each transcript line is `<utt-id> <TRANSCRIPT>`. Only headers are read (for
durations), never samples, so the full 960-hour download is handled the same
way as a 22-utterance sample.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import soundfile as sf

from .manifest import Utterance

_UTT_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


class LibriSpeechError(Exception):
    """The tree does not look like LibriSpeech; the message names the file (and line)."""


def _librispeech_dir(root: str | os.PathLike) -> Path:
    """Accept either the folder holding `LibriSpeech/` or `LibriSpeech/` itself."""
    root = Path(root)
    if (root / "LibriSpeech").is_dir():
        return root / "LibriSpeech"
    if root.is_dir():
        return root
    raise LibriSpeechError(f"{root}: not a directory (expected the LibriSpeech folder or its parent)")


def _numeric_dirs(folder: Path) -> list[Path]:
    """Sub-folders named by a number (speakers, chapters), in numeric order."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def librispeech_splits(root: str | os.PathLike) -> list[str]:
    """Names of the splits present (e.g. ['dev-clean', 'test-clean', 'train-clean-100']), sorted.

    A split is any sub-folder that holds numbered speaker folders; the loose
    files of the distribution (SPEAKERS.TXT, ...) are ignored. A folder with no
    split is not a LibriSpeech tree: LibriSpeechError says what was expected and
    what is there.
    """
    base = _librispeech_dir(root)
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and _numeric_dirs(p))
    if not found:
        raise LibriSpeechError(
            f"{base}: not a LibriSpeech tree: expected <split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt "
            f"files beside their .flac audio (e.g. dev-clean/1272/128104/1272-128104.trans.txt), in this folder or "
            f"in a LibriSpeech/ folder inside it; found {_describe(base)}"
        )
    return found


def _describe(folder: Path, shown: int = 8) -> str:
    """What a folder holds, briefly: 'an empty folder' or its first entries (folders end in '/')."""
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not entries:
        return "an empty folder"
    more = f" and {len(entries) - shown} more" if len(entries) > shown else ""
    return ", ".join(entries[:shown]) + more


def _no_such_split(base: Path, split: str) -> LibriSpeechError:
    available = ", ".join(librispeech_splits(base))
    return LibriSpeechError(f"{base / split}: split {split!r} not found; available: {available}")


def select_splits(root: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """``names`` (in order), each checked to be a split of the tree at ``root``; every split when none is named."""
    available = librispeech_splits(root)
    names = list(names)
    for name in names:
        if name not in available:
            raise _no_such_split(_librispeech_dir(root), name)
    return names or available


def _read_chapter(chapter_dir: Path, speaker: str, chapter: str) -> list[Utterance]:
    trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
    if not trans.is_file():
        raise LibriSpeechError(f"{chapter_dir}: missing transcript file {trans.name}")
    audio_files = {p.name[: -len(".flac")]: p for p in chapter_dir.glob("*.flac")}

    utts: list[Utterance] = []
    seen: set[str] = set()
    with open(trans, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            utt_id, _, text = line.partition(" ")
            text = text.strip()
            m = _UTT_ID.match(utt_id)
            if m is None or not text:
                raise LibriSpeechError(
                    f"{trans}:{lineno}: malformed line, expected '<speaker>-<chapter>-<utt> <TRANSCRIPT>', "
                    f"got {line[:80]!r}"
                )
            if (m.group(1), m.group(2)) != (speaker, chapter):
                raise LibriSpeechError(
                    f"{trans}:{lineno}: utterance {utt_id} does not belong to speaker {speaker} chapter {chapter}"
                )
            if utt_id in seen:
                raise LibriSpeechError(f"{trans}:{lineno}: duplicate utterance id {utt_id}")
            seen.add(utt_id)
            audio = audio_files.get(utt_id)
            if audio is None:
                raise LibriSpeechError(f"{trans}:{lineno}: no audio file {utt_id}.flac for this transcript line")
            try:
                info = sf.info(str(audio))
            except (sf.LibsndfileError, RuntimeError) as e:
                raise LibriSpeechError(f"{audio}: unreadable audio ({e})") from e
            utts.append(Utterance(id=utt_id, audio=str(audio), text=text,
                                  duration=info.frames / info.samplerate, speaker=speaker))

    orphans = sorted(set(audio_files) - seen)
    if orphans:
        raise LibriSpeechError(
            f"{chapter_dir / (orphans[0] + '.flac')}: audio file has no line in {trans.name}"
            + (f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else "")
        )
    return utts


def read_librispeech(root: str | os.PathLike, split: str) -> list[Utterance]:
    """All utterances of one split, ordered by speaker, chapter, then transcript order.

    `root` is the folder containing `LibriSpeech/`, or `LibriSpeech/` itself.
    Utterance.speaker is the LibriSpeech speaker id; durations come from the
    FLAC headers.
    """
    base = _librispeech_dir(root)
    split_dir = base / split
    if not split_dir.is_dir():
        raise _no_such_split(base, split)
    utts: list[Utterance] = []
    for speaker_dir in _numeric_dirs(split_dir):
        for chapter_dir in _numeric_dirs(speaker_dir):
            utts.extend(_read_chapter(chapter_dir, speaker_dir.name, chapter_dir.name))
    if not utts:
        raise LibriSpeechError(f"{split_dir}: no utterances found")
    return utts
