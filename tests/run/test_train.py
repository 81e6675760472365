"""Training on real LibriSpeech audio with tiny models: it learns, it resumes exactly, it stops on NaN."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from harness.config import RunConfig, build_config, to_dict
from harness.data.manifest import write_manifest
from harness.tracking.trackers import LocalTracker
from harness.run.trainer import Trainer, TrainingDiverged, run_training

# Values that depend on wall-clock time, not on the computation.
TIMING = {"train/step_seconds", "train/audio_sec_per_sec", "train/wall_seconds"}


def _config(tmp_path: Path, train_utts: list, *, dev_utts: list | None = None, **train: Any) -> RunConfig:
    write_manifest(tmp_path / "train.jsonl", train_utts)
    write_manifest(tmp_path / "dev.jsonl", dev_utts or train_utts)
    data = {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "dev.jsonl"), "test": {"mini": str(tmp_path / "dev.jsonl")}}
    return build_config({
        "data": data,
        "encoder": {"name": "tiny:whisper"},
        "llm": {"name": "tiny:llama"},
        "adapter": {"hidden": 64},
        "train": {"device": "cpu", "warmup_steps": 0, "eval_every": 0, "log_every": 1, **train},
        "decode": {"max_new_tokens": 80, "tokens_per_second": None},
    })


def _history(out_dir: Path) -> list[dict[str, Any]]:
    return LocalTracker(out_dir).history()


def _series(history: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {r["step"]: r["value"] for r in history if r["key"] == key}


def _duplicates(history: list[dict[str, Any]]) -> set[tuple[int, str]]:
    return {k for k, n in Counter((r["step"], r["key"]) for r in history).items() if n > 1}


def _no_duplicates(history: list[dict[str, Any]]) -> None:
    dup = _duplicates(history)
    assert not dup, f"metrics logged twice: {sorted(dup)[:5]}"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The frozen-encoder feature cache of these runs lives in the test's folder, not in ~/.cache."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------- it learns


def test_overfits_a_few_real_utterances(tmp_path: Path, libri) -> None:
    """Projector-only training (frozen tiny Whisper, frozen tiny Llama) memorises four real
    utterances, two of them of nearly equal length (3.32 s, 3.33 s): the speech content is used."""
    utts = sorted(libri["dev-clean"], key=lambda u: u.duration)[:4]
    cfg = _config(tmp_path, utts, max_steps=200, lr=1e-2, batch_size=4, checkpoint_every=1000)
    result = run_training(cfg, tmp_path / "run", progress=False)

    history = _history(tmp_path / "run")
    loss = _series(history, "train/loss")
    assert sorted(loss) == list(range(1, 201))
    final = sum(loss[s] for s in range(196, 201)) / 5
    assert final < 0.2 * loss[1], (loss[1], final)
    assert result.metrics["dev/acc"] >= 0.95  # teacher-forced next-token accuracy
    assert result.metrics["dev/loss"] < 0.2 * loss[1]
    # Greedy decoding reproduces most of what was memorised.
    rows = [json.loads(line) for line in (tmp_path / "run" / "transcripts" / "mini.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [u.id for u in utts]
    assert result.metrics["test/mini/wer"] < 0.6  # 0.0 to 0.4 over seeds 0-6
    assert any(r["errors"] == 0 for r in rows)
    # The run folder holds what it should.
    for name in ("config.yaml", "config_hash", "params.json", "trainable.safetensors", "result.json", "checkpoint/state.pt"):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "run" / "config_hash").read_text().strip() == result.config_hash
    _no_duplicates(history)


# ------------------------------------------------------------------------------- it resumes


class _Killed(Exception):
    """Stands for the process dying (no handler runs, nothing is saved)."""


class _DyingTracker(LocalTracker):
    """A real LocalTracker whose process 'dies' when the trainer reports ``die_at_step``."""

    def __init__(self, out_dir: Path, die_at_step: int, exc: type[BaseException]) -> None:
        super().__init__(out_dir)
        self.die_at_step, self.exc = die_at_step, exc

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        if step == self.die_at_step and "train/loss" in metrics:
            raise self.exc()


def _resume_config(tmp_path: Path, utts: list, *, cache: bool = True) -> RunConfig:
    # 5 utterances in batches of 2 (an epoch is 3 batches): the resume point is mid-epoch; LoRA
    # dropout draws random numbers every step; cosine schedule with warm-up has a position.
    cfg = _config(
        tmp_path, utts, max_steps=8, lr=5e-3, batch_size=2, warmup_steps=3, schedule="cosine",
        checkpoint_every=3, eval_every=4, eval_utterances=2,
    )
    data = to_dict(cfg)
    data["llm"]["lora"].update(enabled=True, dropout=0.3)
    data["encoder"]["cache"] = cache
    data["decode"]["max_new_tokens"] = 12
    return build_config(data)


@pytest.fixture(scope="module", params=[True, False], ids=["feature-cache", "no-cache"])
def uninterrupted(request, tmp_path_factory, utts_by_duration) -> tuple[RunConfig, Path, list[dict[str, Any]]]:
    """A run that never stopped, with the frozen encoder's frames from the cache or from the audio."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    cfg = _resume_config(tmp, utts_by_duration[:5], cache=request.param)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp / "cache"))
        run_training(cfg, tmp / "run", progress=False)
    assert (tmp / "cache" / "features").is_dir() == request.param
    history = _history(tmp / "run")
    _no_duplicates(history)
    return cfg, tmp / "run", history


@pytest.mark.parametrize(("die_at", "exc"), [(7, _Killed), (5, KeyboardInterrupt)])
def test_killed_run_resumes_to_the_same_weights(tmp_path: Path, uninterrupted, die_at: int, exc) -> None:
    """Die at step 7 (last checkpoint: 6; steps 7's metrics lost) or be interrupted at step 5 (the
    trainer checkpoints on Ctrl-C); a new Trainer on the same folder finishes the run, and weights and
    logged history equal those of a run that never stopped."""
    cfg, ref_dir, ref_history = uninterrupted
    out = tmp_path / "run"
    first = Trainer(cfg, out, tracker=_DyingTracker(out, die_at, exc), progress=False)
    first.setup()
    with pytest.raises(exc):
        first.train()
    resume_at = 6 if exc is _Killed else 5
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=True)["state"]["step"] == resume_at

    second = Trainer(cfg, out, progress=False)
    second.setup()
    assert second.state.step == resume_at
    result = second.train()
    assert result.state.step == 8

    ref = load_file(str(ref_dir / "trainable.safetensors"))
    got = load_file(str(out / "trainable.safetensors"))
    assert set(got) == set(ref) and any(".lora_B." in k for k in ref)
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-6), k

    history = _history(out)
    _no_duplicates(history)
    # The same entries as the run that never stopped, each as often (nothing lost, nothing repeated).
    assert Counter((r["step"], r["key"]) for r in history) == Counter((r["step"], r["key"]) for r in ref_history)
    for key in ("train/loss", "train/lr", "train/acc", "dev/loss"):
        got_s, ref_s = _series(history, key), _series(ref_history, key)
        assert got_s.keys() == ref_s.keys(), key
        for step in ref_s:
            assert got_s[step] == pytest.approx(ref_s[step], rel=1e-5, abs=1e-7), (key, step)
    assert sorted(_series(history, "train/loss")) == list(range(1, 9))
    assert {r["step"] for r in history if r["key"] == "dev/loss"} == {4, 8}


def test_starting_a_finished_run_again_logs_nothing_twice(tmp_path: Path, uninterrupted) -> None:
    cfg, ref_dir, ref_history = uninterrupted
    shutil.copytree(ref_dir, tmp_path / "run")
    result = run_training(cfg, tmp_path / "run", progress=False)
    assert result.state.step == 8
    assert _duplicates(_history(tmp_path / "run")) == _duplicates(ref_history)


def test_a_run_folder_refuses_another_configuration(tmp_path: Path, uninterrupted) -> None:
    cfg, ref_dir, _ = uninterrupted
    data = to_dict(cfg)
    data["train"]["max_steps"] = 9  # e.g. "the same run, but longer"
    other = build_config(data)
    with pytest.raises(RuntimeError, match="another configuration"):
        Trainer(other, ref_dir, progress=False).setup()


# ------------------------------------------------------------------------------- it stops


def test_nan_loss_raises_training_diverged_naming_the_step(tmp_path: Path, utts_by_duration) -> None:
    cfg = _config(tmp_path, utts_by_duration[:2], max_steps=20, lr=1e30, batch_size=2, clip=None)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.setup()
    with pytest.raises(TrainingDiverged) as e:
        trainer.train()
    # Step 1 is computed with the initial weights; its update (lr 1e30) overflows them.
    assert e.value.step == 2
    assert "at step 2" in str(e.value)
    assert e.value.step == trainer.state.step + 1  # it stopped before taking the bad step


def test_corrupted_weight_raises_at_the_first_step(tmp_path: Path, utts_by_duration) -> None:
    cfg = _config(tmp_path, utts_by_duration[:2], max_steps=5, lr=1e-3, batch_size=2)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.setup()
    with torch.no_grad():
        trainer.model.projector.fc2.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="loss is nan at step 1"):
        trainer.train()
