"""Shared fixtures: the real LibriSpeech sample, cached audio, tiny-model configs.

The data lives next to the repository (``../shared/data``, see its README); tests that need it are
skipped with a clear reason when it is absent.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from harness.config import RunConfig, load_config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LIBRISPEECH = DATA / "librispeech-mini"

# Base overrides of every tiny model in these tests: tiny Whisper encoder into the tiny Llama, a
# 64-wide projector (the 2048 default would dominate the run time of tiny models).
TINY = ("encoder.name=tiny:whisper", "llm.name=tiny:llama", "adapter.hidden=64", "train.device=cpu")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a minute (deselect with -m 'not slow')")
    # Tiny models: a second thread costs more in synchronisation than it saves, and on a shared
    # 2-core machine it makes the suite several times slower. OMP_NUM_THREADS still wins.
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def tiny_config(*overrides: str) -> RunConfig:
    """A validated config of tiny models, with extra ``a.b=v`` overrides applied last."""
    return load_config(None, [*TINY, *overrides])


@functools.lru_cache(maxsize=None)
def _audio(path: str) -> torch.Tensor:
    from harness.data.audio import load_audio

    return load_audio(path)


def audio(utt) -> torch.Tensor:
    """The utterance's 16-kHz waveform (decoded once per session; do not modify in place)."""
    return _audio(utt.audio)


@pytest.fixture(scope="session")
def librispeech_root() -> Path:
    if not (LIBRISPEECH / "LibriSpeech").is_dir():
        pytest.skip(f"real LibriSpeech sample not found at {LIBRISPEECH} (../shared/data/librispeech-mini)")
    return LIBRISPEECH


@pytest.fixture(scope="session")
def libri(librispeech_root: Path) -> dict[str, list]:
    """Split name -> utterances of the real LibriSpeech sample."""
    from harness.data.librispeech import librispeech_splits, read_librispeech

    return {split: read_librispeech(librispeech_root, split) for split in librispeech_splits(librispeech_root)}


@pytest.fixture(scope="session")
def utts_by_duration(libri: dict[str, list]) -> list:
    """Every real utterance, shortest first (2.1 s ... 16.0 s)."""
    return sorted((u for split in libri.values() for u in split), key=lambda u: u.duration)


@contextlib.contextmanager
def mlflow_server(tmp: Path, *, start_timeout: float = 120.0):
    """A real `mlflow server` on a free loopback port with a SQLite store under ``tmp``; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/server.db",
         "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
