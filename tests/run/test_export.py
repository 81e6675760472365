"""`harness export`: a trained run as a folder transformers loads, with a model card; the round trip in a
fresh process gives exactly the run's own transcripts (real tiny models, real LibriSpeech audio)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.data.manifest import write_manifest
from harness.run.trainer import run_training
from tests.conftest import tiny_config

_ENTRY = Path(sys.executable).with_name("harness")
HARNESS = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "harness.cli"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, libri) -> tuple[Path, list]:
    tmp = tmp_path_factory.mktemp("export")
    os.environ.setdefault("HARNESS_CACHE", str(tmp / "cache"))
    train, test = tmp / "train.jsonl", tmp / "test.jsonl"
    write_manifest(train, libri["dev-clean"][:4])
    write_manifest(test, libri["test-clean"][:3])
    cfg = tiny_config(f"data.train={train}", f"data.dev={train}", f"data.test={{ls: {test}}}",
                      "train.max_steps=4", "train.eval_every=2", "train.eval_utterances=2", "train.warmup_steps=1",
                      "decode.max_new_tokens=6")
    run_training(cfg, tmp / "run", progress=False)
    return tmp / "run", libri["test-clean"][:3]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HARNESS_LOG_DIR": str(tmp / "logs"), "OMP_NUM_THREADS": "1"}


def test_export_round_trip(trained, tmp_path: Path) -> None:
    run, utts = trained
    out = tmp_path / "exported"
    done = subprocess.run([*HARNESS, "export", str(run), str(out)], capture_output=True, text=True, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert {"config.json", "model.safetensors", "modeling_slam_asr.py", "README.md"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "slam_asr" and config["harness_config"]["adapter"]["k"] == 5
    card = (out / "README.md").read_text()
    assert "tiny:whisper" in card and "| ls | 3 |" in card and "95 % interval" in card and "4 optimizer steps" in card

    expected = [json.loads(line)["hypothesis"] for line in (run / "transcripts" / "ls.jsonl").read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in (run / "transcripts" / "ls.jsonl").read_text().splitlines()]
    paths = [next(u.audio for u in utts if u.id == i) for i in ids]
    code = ("import json, sys\nfrom transformers import AutoModel\n"
            "m = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
            "print(json.dumps(m.transcribe(sys.argv[2:])))\n")
    fresh = subprocess.run([sys.executable, "-c", code, str(out), *paths], capture_output=True, text=True,
                           env=_env(tmp_path))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert json.loads(fresh.stdout.strip().splitlines()[-1]) == expected

    cli = subprocess.run([*HARNESS, "transcribe", str(out), *paths], capture_output=True, text=True, env=_env(tmp_path))
    assert cli.returncode == 0, cli.stderr
    assert [line.split("\t", 1)[1] for line in cli.stdout.strip().splitlines()] == expected


def test_export_errors_are_one_line(trained, tmp_path: Path) -> None:
    run, _ = trained
    bad = subprocess.run([*HARNESS, "export", str(tmp_path), str(tmp_path / "o")], capture_output=True, text=True,
                         env=_env(tmp_path))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "not a run folder (no config.yaml)" in bad.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    refused = subprocess.run([*HARNESS, "export", str(run), str(busy)], capture_output=True, text=True, env=_env(tmp_path))
    assert refused.returncode != 0 and "not an exported model folder" in refused.stderr
    assert (busy / "keep.txt").read_text() == "mine"
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.yaml").write_text((run / "config.yaml").read_text())
    none = subprocess.run([*HARNESS, "export", str(untrained), str(tmp_path / "o2")], capture_output=True, text=True,
                          env=_env(tmp_path))
    assert none.returncode != 0 and "no trained weights" in none.stderr and "Traceback" not in none.stderr
    assert not (tmp_path / "o2").exists()  # nothing written for a run that has not trained
