"""Audio loading: any file soundfile can read becomes 1-D float32 at 16 kHz.

Every model in the harness consumes 16 kHz mono, so this is the one place where
rates, channels and sample formats are normalised. Broken input is rejected
here with an `AudioError` that names the file, instead of surfacing later as a
shape error or a NaN loss deep inside training.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from harness.atomic import replacing

SAMPLE_RATE = 16000


class AudioError(Exception):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _check_wav_complete(path: Path) -> None:
    """Raise AudioError if a RIFF/WAVE file's data chunk claims more bytes than the file has.

    libsndfile silently clamps a truncated WAV to the bytes present, so a file cut
    short by an interrupted copy would otherwise load as a shorter, valid-looking
    clip whose transcript no longer matches its audio.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return  # not plain RIFF (e.g. RF64 or another container): leave it to libsndfile
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return  # written by a streaming tool that never knew the length
                if pos + 8 + chunk_size > size:
                    raise AudioError(
                        path,
                        f"truncated WAV: data chunk declares {chunk_size} bytes "
                        f"but only {size - pos - 8} are present",
                    )
                return
            pos += 8 + chunk_size + (chunk_size & 1)  # RIFF chunks are word aligned
        raise AudioError(path, "WAV file has no complete 'data' chunk")


def _info(path: Path) -> sf._SoundFileInfo:
    if not path.is_file():
        raise AudioError(path, "file does not exist")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"unreadable audio ({e})") from e


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds, read from the file header without decoding the samples."""
    path = Path(path)
    info = _info(path)
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(path, "zero-length audio")
    return info.frames / info.samplerate


DURATION_TOLERANCE = 0.1  # seconds (or 2 %, whichever is larger): rounding in a manifest, not a wrong file


def duration_disagreement(claimed: float, actual: float) -> str | None:
    """Why ``claimed`` seconds (a manifest's) is wrong for audio of ``actual`` seconds, or ``None``."""
    if abs(claimed - actual) <= max(DURATION_TOLERANCE, 0.02 * actual):
        return None
    return f"manifest duration {claimed:g} s but the audio is {actual:.2f} s long"


def load_audio(path: str | os.PathLike) -> torch.Tensor:
    """Load an audio file as a 1-D float32 tensor at SAMPLE_RATE (16 kHz), in [-1, 1].

    Multi-channel audio is downmixed by averaging the channels; other rates are
    resampled with soxr's band-limited (anti-aliased) high-quality resampler.
    Raises AudioError for missing, unreadable, truncated or empty files and for
    NaN/inf samples.
    """
    path = Path(path)
    info = _info(path)
    if info.format == "WAV":
        _check_wav_complete(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"cannot decode audio ({e})") from e
    # A compressed stream (FLAC, OGG) cut short decodes fewer frames than its header promises.
    if info.frames > 0 and len(data) != info.frames:
        raise AudioError(path, f"truncated: header says {info.frames} frames, decoded {len(data)}")
    if len(data) == 0:
        raise AudioError(path, "zero-length audio")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or infinite samples")

    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


def save_audio(path: str | os.PathLike, samples: np.ndarray | torch.Tensor, *, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono samples in [-1, 1] as 16-bit PCM; the format follows the suffix (.wav or .flac).

    The file is written under a temporary name and renamed, so an interrupted run
    never leaves a half-written file that a later run would take as finished.
    """
    path = Path(path)
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"save_audio expects 1-D mono samples, got shape {samples.shape}")
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"save_audio: unsupported suffix {path.suffix!r} in {path}; use .wav or .flac")
    with replacing(path) as tmp:
        sf.write(str(tmp), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format=fmt)
