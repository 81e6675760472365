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
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

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


def encoder_fingerprint(encoder: SpeechEncoder, reference: str, input_mode: str) -> str:
    """Identity of what the encoder computes: reference, input mode and a digest of every weight."""
    h = hashlib.sha256(f"{reference}\n{input_mode}\n{type(encoder).__name__}".encode())
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

    def __init__(self, encoder: SpeechEncoder, *, reference: str, input_mode: str, root: str | Path) -> None:
        self.encoder = encoder
        self.fingerprint = encoder_fingerprint(encoder, reference, input_mode)
        self.dir = Path(root) / "features" / self.fingerprint
        self._digests: dict[str, str] = {}  # audio path -> content digest (hashing is not free)

    def _path(self, utt: Utterance) -> Path:
        d = self._digests.get(utt.audio)
        if d is None:
            d = self._digests[utt.audio] = audio_digest(utt.audio)
        return self.dir / d[:2] / f"{d}.safetensors"

    def estimate_bytes(self, utts: Sequence[Utterance]) -> int:
        """Disk needed for ``utts`` in fp16 (frames from the encoder's own frame arithmetic)."""
        frames = sum(self.encoder.num_frames(int(round(u.duration * SAMPLE_RATE))) for u in utts)
        return frames * self.encoder.dim * 2

    def missing(self, utts: Sequence[Utterance]) -> list[Utterance]:
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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"frames": frames.to(torch.float16).contiguous().cpu()}, str(tmp))
        os.replace(tmp, path)  # atomic: readers see the old state or the whole file

    def load(self, utts: Sequence[Utterance], *, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``B, T, D`` frames (fp32) and lengths for ``utts``; encodes any that are missing."""
        if self.missing(utts):
            self.fill(utts, progress=False)
        seqs = [load_file(str(self._path(u)))["frames"].float() for u in utts]
        lengths = torch.tensor([s.shape[0] for s in seqs], device=device)
        frames = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(device)
        return frames, lengths
