"""MLflow's UI as a user opens it after a study: a real `mlflow server`, a real tiny study, headless Chromium.

Checked in the browser (the DOM after MLflow's own JavaScript ran, and a screenshot): the link the
harness prints opens the model-training view (not the GenAI overview), the saved view lists every
cell, and the metric charts plot the cells' curves. Checked over REST: the experiment's kind and
view tags, each split as a dataset input (name, context, digest, size) and MLflow's system metrics.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from harness.data.librispeech import read_librispeech
from harness.data.manifest import write_manifest
from harness.experiments.grid import run_study
from harness.experiments.study import load_study
from harness.tracking import tags
from harness.tracking.ui import VIEW_TAG, experiment_url
from tests.conftest import mlflow_server

REPO = Path(__file__).resolve().parents[2]
MINI = REPO.parent / "shared" / "data" / "librispeech-mini"
CHROMIUM = Path("/usr/bin/chromium")


def _study(tmp: Path) -> Path:
    import yaml

    paths = {}
    for split in ("dev-clean", "test-clean"):
        paths[split] = tmp / f"{split}.jsonl"
        write_manifest(paths[split], read_librispeech(MINI, split)[:4])
    doc = {"name": "ui", "axes": {"adapter.k": [2, 5]}, "base": {
        "encoder": {"name": "tiny:whisper"}, "llm": {"name": "tiny:llama", "prompt_style": "plain"},
        "adapter": {"hidden": 64}, "decode": {"max_new_tokens": 4},
        "data": {"train": str(paths["dev-clean"]), "dev": str(paths["dev-clean"]), "test": {"ls": str(paths["test-clean"])}},
        "train": {"max_steps": 6, "eval_every": 3, "eval_utterances": 2, "checkpoint_every": 2, "warmup_steps": 1,
                  "device": "cpu"}}}
    path = tmp / "ui.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture()
def server(tmp_path: Path):
    with mlflow_server(tmp_path, start_timeout=240) as url:
        yield url


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
                           "--virtual-time-budget=60000", *args], capture_output=True, text=True, timeout=180)


def test_a_study_in_the_mlflow_ui(tmp_path: Path, server: str, monkeypatch) -> None:
    if not MINI.is_dir():
        pytest.skip(f"{MINI} not found (the shared LibriSpeech sample)")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # the tiny cells last a second or two
    st = load_study(_study(tmp_path))
    outcomes = run_study(st, uri=server, runs_root=tmp_path / "runs", progress=False)
    assert [o.status for o in outcomes] == ["done", "done"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)
    exp = client.get_experiment_by_name(st.experiment)
    assert exp.tags[tags.EXPERIMENT_KIND] == tags.MODEL_TRAINING and VIEW_TAG in exp.tags
    for o in outcomes:
        run = client.get_run(o.run_id)
        assert f"`adapter.k` = `{o.cell.config.adapter.k}`" in run.data.tags[tags.DESCRIPTION]  # shown on the run page
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "dev", "ls"}
        contexts = {n: [t.value for t in d.tags if t.key == tags.DATA_CONTEXT] for n, d in inputs.items()}
        assert contexts == {"train": ["training"], "dev": ["validation"], "ls": ["test"]}
        assert json.loads(inputs["ls"].dataset.profile)["num_rows"] == 4
        assert inputs["train"].dataset.digest == inputs["dev"].dataset.digest != inputs["ls"].dataset.digest
        assert any(k.startswith("system/cpu") for k in run.data.metrics), sorted(run.data.metrics)

    if not CHROMIUM.exists():
        pytest.skip("headless Chromium not installed (/usr/bin/chromium; Debian: apt-get install chromium)")
    url = experiment_url(server, exp.experiment_id)
    shot = tmp_path / "experiment.png"
    assert _chromium(f"--screenshot={shot}", url).returncode == 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = _chromium("--dump-dom", url).stdout
    (tmp_path / "experiment.html").write_text(dom)
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    assert "Model training" in text and "Detect Issues" not in text  # the training view, not GenAI's overview
    assert "Group: cell" in text, text[:2000]
    charts = dom.split("js-plotly-plot")[1:]  # from each plotly chart on: its axes, traces and legend
    assert charts, "no metric chart rendered"
    legends = " ".join(" ".join(re.sub(r"<[^>]+>", " ", c[:40_000]).split()) for c in charts)
    for o in outcomes:  # each cell's curve is in the charts, named by its run
        assert f"{o.cell.name} (" in legends, legends[:1000]
