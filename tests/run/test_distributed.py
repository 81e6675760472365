"""Several processes on CPU: `torchrun --nproc_per_node 2` trains like one process on the same
global batch (same losses, same weights, same evaluation and transcripts), with rank 0 alone logging
and saving, both with DDP and with the LLM's weights sharded by FSDP2."""
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

from tests.experiments.test_reliability import base_config

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _metrics(run: Path) -> dict[str, dict[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    counts = Counter((r["step"], r["key"]) for r in rows)
    assert max(counts.values()) == 1, "a metric was logged twice (by two ranks?)"
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        out.setdefault(r["key"], {})[r["step"]] = r["value"]
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_on_the_same_global_batch(tmp_path: Path, libri, parallel: str) -> None:
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found beside {sys.executable}")
    utts = sorted(libri["dev-clean"], key=lambda u: u.duration)[:6]
    write_manifest(tmp_path / "train.jsonl", utts)
    write_manifest(tmp_path / "dev.jsonl", utts[:5])
    # Global batch 4 (two per rank under torchrun), accumulated twice: 8 utterances per step.
    cfg = base_config(tmp_path, max_steps=6, checkpoint_every=3, lr=5e-3, grad_accum=2, parallel=parallel,
                      eval_every=3, eval_utterances=5)
    cfg["train"]["batch_size"] = 4
    # Decoding batches of 2 per rank: the last of 5 utterances leaves rank 1 a stand-in batch.
    cfg["decode"]["batch_size"] = 2
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_CACHE": str(tmp_path / "cache")}
    train = ["-m", "harness.cli", "train", str(tmp_path / "run.yaml"), "--no-progress", "--out"]

    one = subprocess.run([sys.executable, *train, str(tmp_path / "one")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *train, str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    ma, mb = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    a, b = ma["train/loss"], mb["train/loss"]
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), (step, a[step], b[step])
    assert a[6] != a[1]  # it trained
    held, total = mb["dist/llm_params_per_rank"][0], mb["params/llm"][0]
    if parallel == "fsdp":  # each rank holds its shard of the decoder layers (embeddings stay whole)
        embeddings = 100 * 64  # tiny:llama's tied token embeddings / LM head
        assert held == pytest.approx(embeddings + (total - embeddings) / 2, rel=0.02), (held, total)
    else:
        assert held == total
    # Evaluation shared by both ranks gives the numbers one process gets.
    for key in ("dev/loss", "dev/acc", "dev/wer", "test/mini/wer"):
        assert set(ma[key]) == set(mb[key]) and ma[key], key
        for step in ma[key]:
            assert mb[key][step] == pytest.approx(ma[key][step], rel=1e-5, abs=1e-6), (key, step)
    one_rows = (tmp_path / "one" / "transcripts" / "mini.jsonl").read_text().splitlines()
    two_rows = (tmp_path / "two" / "transcripts" / "mini.jsonl").read_text().splitlines()
    assert len(one_rows) == 5 and [json.loads(r)["hypothesis"] for r in two_rows] == [json.loads(r)["hypothesis"] for r in one_rows]
    wa = load_file(str(tmp_path / "one" / "trainable.safetensors"))
    wb = load_file(str(tmp_path / "two" / "trainable.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
