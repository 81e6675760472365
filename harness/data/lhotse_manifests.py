"""Lhotse manifests (the data library of icefall and NeMo) read as, and written from, the harness's utterances.

Wherever a JSONL manifest is accepted, a Lhotse manifest is too (:func:`harness.data.manifest.read_manifest`
dispatches here by content):

- a **CutSet** (``*_cuts_*.jsonl.gz``, or ``.jsonl``): one utterance per cut, its supervision's text;
- a **SupervisionSet**: with the RecordingSet beside it, named as Lhotse's recipes name them
  (``<corpus>_supervisions_<part>.jsonl.gz`` and ``<corpus>_recordings_<part>.jsonl.gz``).

A cut must be one whole recording from one audio file with one transcribed supervision (as LibriSpeech,
Common Voice and most ASR corpora prepare); a cut that is a segment of a longer recording, or holds
several supervisions, is refused, naming the cut, rather than trained on as the whole file.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from harness.data.manifest import MAX_LINE_CHARS, ManifestError, Utterance

_TOLERANCE = 0.02  # seconds: a cut within this of its recording's duration is the whole recording


def _first_record(path: Path) -> dict | None:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for _ in range(100):  # the first non-blank line, read with a bounded length
                line = f.readline(MAX_LINE_CHARS + 1)
                if not line or len(line) > MAX_LINE_CHARS:
                    return None
                if line.strip():
                    row = json.loads(line)
                    return row if isinstance(row, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, EOFError, ValueError):
        return None  # not Lhotse's: the JSONL reader reports what is wrong with it, naming the line
    return None


def lhotse_kind(path: str | Path) -> str | None:
    """``cuts``, ``supervisions`` or ``recordings`` for a Lhotse manifest, ``None`` for anything else."""
    row = _first_record(Path(path))
    if row is None:
        return None
    if "supervisions" in row and ("recording" in row or "type" in row):
        return "cuts"
    if "recording_id" in row and "start" in row:
        return "supervisions"
    if "sources" in row and "sampling_rate" in row:
        return "recordings"
    return None


def _cuts(path: Path, kind: str):
    from lhotse import CutSet, load_manifest

    if kind == "cuts":
        return CutSet.from_file(path)
    if kind == "recordings":
        raise ManifestError(f"{path}: a Lhotse RecordingSet holds no transcripts; name its SupervisionSet or a CutSet")
    recordings = path.with_name(path.name.replace("supervisions", "recordings"))
    if recordings == path or not recordings.is_file():
        raise ManifestError(f"{path}: a Lhotse SupervisionSet needs its RecordingSet beside it ({recordings.name} not found)")
    return CutSet.from_manifests(recordings=load_manifest(recordings), supervisions=load_manifest(path))


def _utterance(cut, where: str) -> Utterance:
    sups = [s for s in cut.supervisions if s.text]
    if len(sups) != 1:
        raise ManifestError(f"{where}: cut {cut.id!r} has {len(sups)} transcribed supervisions; expected one per cut")
    rec = getattr(cut, "recording", None)
    if rec is None or len(rec.sources) != 1 or rec.sources[0].type != "file":
        raise ManifestError(f"{where}: cut {cut.id!r} is not read from one audio file (sources: "
                            f"{[s.type for s in rec.sources] if rec else 'none'})")
    if cut.start > _TOLERANCE or abs(cut.duration - rec.duration) > _TOLERANCE:
        raise ManifestError(f"{where}: cut {cut.id!r} is a segment ({cut.start:.2f}-{cut.end:.2f} s) of a "
                            f"{rec.duration:.2f} s recording; only whole-recording cuts are supported")
    sup = sups[0]
    return Utterance(id=sup.id, audio=str(rec.sources[0].source), text=sup.text, duration=float(cut.duration),
                     speaker=sup.speaker)


def read_lhotse(path: str | Path, kind: str | None = None) -> list[Utterance]:
    """The utterances of a Lhotse CutSet or SupervisionSet (``kind`` as :func:`lhotse_kind` says)."""
    path = Path(path)
    kind = kind or lhotse_kind(path)
    if kind is None:
        raise ManifestError(f"{path}: not a Lhotse manifest (cuts, supervisions or recordings)")
    try:
        cuts = _cuts(path, kind)
        utts = [_utterance(c, str(path)) for c in cuts]
    except ManifestError:
        raise
    except Exception as e:  # noqa: BLE001 - Lhotse's own errors (a malformed record, a missing key) name no line
        raise ManifestError(f"{path}: not a readable Lhotse {kind} manifest ({type(e).__name__}: {e})") from None
    seen: set[str] = set()
    for u in utts:
        if u.id in seen:
            raise ManifestError(f"{path}: duplicate utterance id {u.id!r}")
        seen.add(u.id)
    return utts


def to_cutset(utts: list[Utterance], *, read_headers: bool = True):
    """A Lhotse CutSet of ``utts``, one whole-recording cut each; ``read_headers=False`` takes each
    recording's length from the manifest instead of its file (for samplers, which need durations only)."""
    from lhotse import AudioSource, CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    recordings, supervisions = [], []
    for u in utts:
        if read_headers:
            rec = Recording.from_file(u.audio, recording_id=u.id)
        else:
            rec = Recording(id=u.id, sources=[AudioSource(type="file", channels=[0], source=u.audio)], sampling_rate=16000,
                            num_samples=round(u.duration * 16000), duration=u.duration)
        recordings.append(rec)
        supervisions.append(SupervisionSegment(id=u.id, recording_id=u.id, start=0.0, duration=rec.duration,
                                               channel=0, text=u.text, speaker=u.speaker))
    return CutSet.from_manifests(recordings=RecordingSet.from_recordings(recordings),
                                 supervisions=SupervisionSet.from_segments(supervisions))


def write_lhotse(utts: list[Utterance], path: str | Path) -> None:
    """A Lhotse CutSet of ``utts`` (each recording's header read from its file) at ``path`` (``.jsonl.gz``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    to_cutset(utts).to_file(path)
