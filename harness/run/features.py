"""Frozen-encoder feature cache.

A frozen encoder maps the same audio to the same frames in every run, grid cell and search trial,
so its outputs are computed once and kept on disk, in 16-bit floats, one safetensors file per
utterance::

    <cache>/features/<encoder fingerprint>/<aa>/<audio sha1>.safetensors   # frames: T, D (fp16)

The *encoder fingerprint* hashes the encoder reference, its input mode and a digest of its
weights, so a different checkpoint (or a changed conversion) never reads stale features; the file
name hashes the audio *content*, so an edited audio file is a miss, not a wrong hit. Files are
written to a temporary name and renamed into place: concurrent workers filling the same cache
never leave a partial file (at worst both compute the same utterance and one rename wins).
A trainable encoder bypasses the cache entirely.

Hashing the audio is not free at scale (LibriSpeech-960 is ~60 GB of FLAC, minutes to read), and every
run, grid cell and search trial needs the same digests, so they are remembered on disk as well
(:class:`AudioDigests`): a file whose stat is unchanged is not read again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from harness.atomic import replacing
from harness.data.audio import SAMPLE_RATE, load_audio
from harness.data.manifest import Utterance
from harness.models.encoders import SpeechEncoder

log = logging.getLogger("harness.features")


def audio_digest(path: str | os.PathLike) -> str:
    """sha1 of the file's bytes (the audio content, whatever its name or timestamp)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class AudioDigests:
    """Content digests of audio files, remembered on disk by the file's stat.

    An entry holds the path's size, mtime, ctime and inode with the digest; a later lookup whose stat
    matches gets the remembered digest without reading the file. Rewriting a file moves its ctime,
    which, unlike mtime, no tool can set back (``cp -p``, ``rsync -t`` and ``touch -d`` all leave a new
    one), so an edited file is always hashed again. A copied or moved corpus is hashed again once.

    The index lives in ``<root>/<0-f>.json``, 16 shards by path, each replaced atomically. Two
    processes saving the same shard at once may drop each other's new entries (those files are
    hashed again next time); neither can leave a shard half-written, and a shard that does not parse
    is treated as empty.

    Example::

        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "a.flac").write_bytes(b"audio")
        5
        >>> first = AudioDigests(root / "index")
        >>> first.get([str(root / "a.flac")]) == {str(root / "a.flac"): audio_digest(root / "a.flac")}
        True
        >>> again = AudioDigests(root / "index")
        >>> _ = again.get([str(root / "a.flac")])
        >>> first.hashed, again.hashed   # files read to hash them, per instance
        (1, 0)
    """

    SAVE_EVERY = 2000
    """Hashed files between saves, at least: an interrupted first pass over a large corpus keeps most of its
    work. A save rewrites the shards it touches in full, so the interval also grows with the index (a quarter
    of the entries it holds): the saves of a first pass over N files then cost O(N) in all, not O(N^2 / 2000)
    (at 281,000 files: `python -m harness.bench.scale`)."""

    def __init__(self, root: str | Path) -> None:
        self.dir = Path(root)
        self._shards: dict[str, dict[str, list]] = {}  # shard name -> abs path -> [size, mtime, ctime, inode, digest]
        self.hashed = 0
        """Files this instance read and hashed (the rest came from the index)."""

    @staticmethod
    def _shard_name(path: str) -> str:
        return hashlib.sha1(path.encode()).hexdigest()[0]

    def _read_shard(self, name: str) -> dict[str, list]:
        try:
            data = json.loads((self.dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _shard(self, name: str) -> dict[str, list]:
        if name not in self._shards:
            self._shards[name] = self._read_shard(name)
        return self._shards[name]

    def get(self, paths: Sequence[str | os.PathLike]) -> dict[str, str]:
        """``{path: sha1 of its bytes}`` for ``paths`` (as given), hashing only files the index does not
        know in their present state."""
        out: dict[str, str] = {}
        new: dict[str, dict[str, list]] = {}
        for given in paths:
            key = os.path.abspath(given)
            st = os.stat(key)
            stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            name = self._shard_name(key)
            entry = self._shard(name).get(key)
            if isinstance(entry, list) and entry[:4] == stamp:
                out[str(given)] = entry[4]
                continue
            digest = audio_digest(key)
            self.hashed += 1
            self._shards[name][key] = new.setdefault(name, {})[key] = [*stamp, digest]
            out[str(given)] = digest
            pending = sum(map(len, new.values()))
            if pending >= self.SAVE_EVERY and pending >= sum(map(len, self._shards.values())) // 4:
                self._save(new)
                new = {}
        self._save(new)
        return out

    def _save(self, new: dict[str, dict[str, list]]) -> None:
        if not new:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, entries in new.items():
            merged = self._read_shard(name) | entries  # keep what other processes saved meanwhile
            with replacing(self.dir / f"{name}.json") as tmp:
                tmp.write_text(json.dumps(merged, separators=(",", ":")))


def encoder_fingerprint(encoder: SpeechEncoder, reference: str) -> str:
    """Identity of what the encoder computes: reference, options (:attr:`SpeechEncoder.cache_key`)
    and a digest of every weight."""
    h = hashlib.sha256(f"{reference}\n{encoder.cache_key}\n{type(encoder).__name__}".encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def encoder_batch_seconds(device: torch.device) -> float:
    """Audio per encoder batch: on CPU ~30 s (measured with Whisper tiny.en on 2 cores: 120-s batches
    encode 40 % slower than 30-s ones, their activations overflow the caches); on a GPU, more."""
    return 300.0 if device.type == "cuda" else 30.0


def encoder_batches(utts: Sequence[Utterance], batch_seconds: float) -> list[list[Utterance]]:
    """Utterances sorted by duration (little padding), cut into batches of at most ``batch_seconds``
    of audio (an utterance longer than that gets a batch of its own)."""
    batches: list[list[Utterance]] = []
    current, secs = [], 0.0
    for u in sorted(utts, key=lambda u: u.duration):
        if current and secs + u.duration > batch_seconds:
            batches.append(current)
            current, secs = [], 0.0
        current.append(u)
        secs += u.duration
    if current:
        batches.append(current)
    return batches


class FeatureCache:
    """Encoder frames for utterances, computed once and memory-cheap to reload."""

    def __init__(self, encoder: SpeechEncoder, *, reference: str, root: str | Path) -> None:
        self.encoder = encoder
        self.fingerprint = encoder_fingerprint(encoder, reference)
        self.dir = Path(root) / "features" / self.fingerprint
        self.digests = AudioDigests(Path(root) / "features" / "audio-digests")
        self._digests: dict[str, str] = {}  # audio path -> content digest, for this process

    def _resolve(self, utts: Sequence[Utterance]) -> None:
        todo = [u.audio for u in utts if u.audio not in self._digests]
        if todo:
            self._digests.update(self.digests.get(todo))

    def _path(self, utt: Utterance) -> Path:
        if utt.audio not in self._digests:
            self._resolve([utt])
        d = self._digests[utt.audio]
        return self.dir / d[:2] / f"{d}.safetensors"

    def estimate_bytes(self, utts: Sequence[Utterance]) -> int:
        """Disk needed for ``utts`` in fp16 (frames from the encoder's own frame arithmetic)."""
        frames = sum(self.encoder.num_frames(int(round(u.duration * SAMPLE_RATE))) for u in utts)
        return frames * self.encoder.dim * 2

    def missing(self, utts: Sequence[Utterance]) -> list[Utterance]:
        """The utterances whose frames are not cached (under this encoder, for their present audio)."""
        self._resolve(utts)
        return [u for u in utts if not self._path(u).exists()]

    @torch.no_grad()
    def fill(self, utts: Sequence[Utterance], *, batch_seconds: float | None = None, progress: bool = True) -> int:
        """Encode every utterance not cached yet; returns how many were computed.

        ``batch_seconds``: audio per encoder batch (default :func:`encoder_batch_seconds`)."""
        todo = self.missing(utts)
        if not todo:
            return 0
        gb = self.estimate_bytes(todo) / 1e9
        log.info("feature cache %s: encoding %d utterances (~%.2f GB in fp16)", self.dir, len(todo), gb)
        was_training = self.encoder.training
        self.encoder.eval()
        bar = tqdm(total=len(todo), desc="feature cache", unit="utt", disable=not progress, leave=False)
        try:
            for batch in encoder_batches(todo, batch_seconds or encoder_batch_seconds(self.encoder.device)):
                frames, lengths = self.encoder([load_audio(u.audio) for u in batch])  # B, T, D
                for u, f, n in zip(batch, frames, lengths):
                    self._write(self._path(u), f[: int(n)])
                bar.update(len(batch))
        finally:
            bar.close()
            self.encoder.train(was_training)
        return len(todo)

    @staticmethod
    def _write(path: Path, frames: torch.Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Readers see no file or the whole file; no fsync: after a power loss a damaged entry is recomputed.
        with replacing(path, durable=False) as tmp:
            save_file({"frames": frames.to(torch.float16).contiguous().cpu()}, str(tmp))

    def _read(self, utt: Utterance, *, retry: bool = True) -> torch.Tensor | None:
        """One entry's ``T, D`` frames; a corrupt entry (truncated, not safetensors, wrong shape) is
        removed with a warning naming it and ``None`` returned, so the caller recomputes it."""
        path = self._path(utt)
        try:
            frames = load_file(str(path))["frames"]
            if frames.dim() != 2 or frames.shape[1] != self.encoder.dim:
                raise ValueError(f"frames of shape {tuple(frames.shape)}, expected (T, {self.encoder.dim})")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            if not retry:
                raise RuntimeError(f"feature cache entry {path} for {utt.audio} is unreadable after recomputing: {e}") from e
            log.warning("feature cache entry %s (audio %s) is corrupt (%s): recomputing it", path, utt.audio, e)
            path.unlink(missing_ok=True)
            return None
        return frames.float()

    def load(self, utts: Sequence[Utterance], *, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``B, T, D`` frames (fp32) and lengths for ``utts``; encodes any that are missing."""
        if self.missing(utts):
            self.fill(utts, progress=False)
        seqs = [self._read(u) for u in utts]
        if any(s is None for s in seqs):  # corrupt entries were removed: compute them again
            self.fill(utts, progress=False)
            seqs = [s if s is not None else self._read(u, retry=False) for u, s in zip(utts, seqs)]
        lengths = torch.tensor([s.shape[0] for s in seqs], device=device)
        frames = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(device)
        return frames, lengths
