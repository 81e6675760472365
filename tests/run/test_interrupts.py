"""A stop signal whose KeyboardInterrupt was swallowed (raised inside a finalizer) still stops the run at the
next step boundary, with a checkpoint; once honoured it is forgotten, so the next run in the process trains."""
from __future__ import annotations

import signal

import pytest

from harness import interrupts
from harness.data.manifest import write_manifest
from harness.run.trainer import run_training
from tests.conftest import tiny_config


def test_a_recorded_stop_is_honoured_once(tmp_path, libri, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    train = tmp_path / "train.jsonl"
    write_manifest(train, libri["dev-clean"][:2])
    cfg = tiny_config(f"data.train={train}", f"data.dev={train}", f"data.test={{t: {train}}}", "train.max_steps=3",
                      "train.eval_every=0", "train.warmup_steps=0", "decode.max_new_tokens=2")
    interrupts.record(signal.SIGINT)  # as the CLI's handler does before raising the exception that got lost
    with pytest.raises(KeyboardInterrupt, match="stop requested"):
        run_training(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint").is_dir() and interrupts.requested() is None
    result = run_training(cfg, tmp_path / "run", progress=False)  # resumes and finishes
    assert result.state.step == 3
