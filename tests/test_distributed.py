"""Data parallelism on CPU: `torchrun --nproc_per_node 2` trains like one process on the same
global batch (same losses, same weights), with rank 0 alone logging and saving."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from harness.data.manifest import write_manifest

from test_reliability import base_config

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    counts = Counter((r["step"], r["key"]) for r in rows)
    assert max(counts.values()) == 1, "a metric was logged twice (by two ranks?)"
    return {r["step"]: r["value"] for r in rows if r["key"] == "train/loss"}


def test_two_processes_match_one_on_the_same_global_batch(tmp_path: Path, libri) -> None:
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    utts = sorted(libri["dev-clean"], key=lambda u: u.duration)[:6]
    write_manifest(tmp_path / "train.jsonl", utts)
    write_manifest(tmp_path / "dev.jsonl", utts[:1])
    # Global batch 4 (two per rank under torchrun), accumulated twice: 8 utterances per step.
    cfg = base_config(tmp_path, max_steps=6, checkpoint_every=3, lr=5e-3, grad_accum=2)
    cfg["train"]["batch_size"] = 4
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_CACHE": str(tmp_path / "cache")}
    train = ["-m", "harness.cli", "train", str(tmp_path / "run.yaml"), "--no-progress", "--out"]

    one = subprocess.run([sys.executable, *train, str(tmp_path / "one")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *train, str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), (step, a[step], b[step])
    assert a[6] != a[1]  # it trained
    wa = load_file(str(tmp_path / "one" / "trainable.safetensors"))
    wb = load_file(str(tmp_path / "two" / "trainable.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
