"""Faults inside a run, round two (docs/reliability.md): a failure between checkpoints, a damaged
checkpoint, a manifest whose durations are wrong. Real LibriSpeech audio, tiny models, a real
SQLite MLflow store."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from harness.config import build_config
from harness.data.audio import load_audio, save_audio
from harness.data.manifest import write_manifest
from harness.experiments.grid import run_study
from harness.tracking.store import make_client
from harness.experiments.study import load_study
from harness.run.checkpoint import CheckpointError
from harness.run.trainer import Trainer

from tests.experiments.test_reliability import (
    _manifests,
    assert_no_duplicates,
    base_config,
    cell_runs,
    failing_at_step_three,
    steps_of,
    write_study,
)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def test_a_failure_between_checkpoints_resumes_without_logging_a_step_twice(tmp_path: Path, libri) -> None:
    """The dev file is a truncated FLAC (its header passes the default scan), so the evaluation at
    step 3 fails the cell, one step after the checkpoint at 2. The failed run keeps steps 1-3; the
    old code sent step 3 again when the retried run recomputed it (two points at step 3)."""
    base, real = failing_at_step_three(tmp_path, libri, max_steps=6)
    path = write_study(tmp_path, "fails_between", base)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    [first] = run_study(load_study(path), uri=uri, runs_root=tmp_path / "runs", progress=False)
    assert first.status == "failed" and "dev.flac" in first.error
    client = make_client(uri)
    assert steps_of(client, first.run_id) == [1, 2, 3]  # what the failed run measured is kept

    (tmp_path / "dev.flac").write_bytes(real)  # the user fixes the file and retries
    [again] = run_study(load_study(path), uri=uri, runs_root=tmp_path / "runs", progress=False, retry_failed=True)
    assert again.status == "done" and again.run_id == first.run_id
    assert steps_of(client, first.run_id) == [1, 2, 3, 4, 5, 6]
    assert_no_duplicates(client, first.run_id)
    assert client.get_run(first.run_id).data.tags["mlflow.parentRunId"]
    assert list(cell_runs(uri, path).values())[0].info.status == "FINISHED"


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "state.pt"])
def test_a_truncated_checkpoint_is_named(tmp_path: Path, libri, damaged: str) -> None:
    """The old loader let safetensors' / torch's own error through ("incomplete metadata", "failed
    finding central directory"), naming no file; every later attempt at the run failed the same way."""
    d = _manifests(tmp_path, libri)
    cfg = build_config(base_config(d, max_steps=2, checkpoint_every=2, lr=1e-3))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.setup()
    trainer.train()
    trainer.cleanup()
    victim = tmp_path / "run" / "checkpoint" / damaged
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    with pytest.raises(CheckpointError) as e:
        Trainer(cfg, tmp_path / "run", progress=False).setup()
    assert str(victim) in str(e.value) and "remove" in str(e.value)


def test_a_wrong_manifest_duration_is_caught_by_the_scan(tmp_path: Path, libri) -> None:
    """The old code trusted ``duration``: a 32-s file listed as 5 s slipped past
    data.max_duration=30 into training, and a 10-s file listed as 0.5 s went on unnoticed."""
    short = sorted(libri["dev-clean"], key=lambda u: u.duration)
    longest = sorted((u for s in libri.values() for u in s), key=lambda u: u.duration)[-2:]
    save_audio(tmp_path / "long.wav", torch.cat([load_audio(u.audio) for u in longest] * 2)[: 32 * 16000])
    real = sf.info(str(tmp_path / "long.wav")).duration
    utts = [*short[:2],
            type(short[0])("long-as-5s", str(tmp_path / "long.wav"), "a long file", 5.0),
            type(short[0])("short-as-half", short[2].audio, short[2].text, 0.5)]
    write_manifest(tmp_path / "train.jsonl", utts)
    write_manifest(tmp_path / "dev.jsonl", short[:1])
    trainer = Trainer(build_config(base_config(tmp_path, max_steps=1, checkpoint_every=1)), tmp_path / "run", progress=False)
    trainer.setup()
    assert [u.id for u in trainer.data.train] == [u.id for u in short[:2]]
    report = {r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "run" / "bad_audio.jsonl").read_text().splitlines())}
    assert set(report) == {"long-as-5s", "short-as-half"}
    assert f"manifest duration 5 s but the audio is {real:.2f} s long" == report["long-as-5s"]
    trainer.cleanup()


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan")])
def test_a_claim_timeout_that_would_busy_loop_is_refused(tmp_path: Path, libri, timeout: float) -> None:
    """``claim_timeout=0`` made the heartbeat beat every 0 s (a busy loop: the cell trained three
    times slower); the runner now refuses it before touching the store."""
    path = write_study(tmp_path, "timeouts", base_config(_manifests(tmp_path, libri), max_steps=1, checkpoint_every=1))
    with pytest.raises(ValueError, match="claim_timeout: expected a finite number of seconds > 0"):
        run_study(load_study(path), uri=f"sqlite:///{tmp_path}/mlflow.db", runs_root=tmp_path / "runs",
                  progress=False, claim_timeout=timeout)
    assert not (tmp_path / "mlflow.db").exists()
