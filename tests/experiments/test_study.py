"""Study files: grid expansion, validation errors with file:line, cell identity, skip/resume, and
logging to a real `mlflow server` read back through its REST API."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError, config_hash
from harness.experiments.grid import find_cell_runs, run_study, study_status
from harness.experiments.study import load_study, run_name
from tests.conftest import mlflow_server

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"

BASE = {
    "encoder": {"name": "tiny:whisper"},
    "llm": {"name": "tiny:llama"},
    "adapter": {"hidden": 64},
}


def write(tmp_path: Path, doc: dict | str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ grid expansion
def test_product_of_axes(tmp_path: Path) -> None:
    st = load_study(write(tmp_path, {"name": "g", "base": BASE, "axes": {"adapter.k": [2, 5, 10], "train.lr": [1e-3, 1e-4]}}))
    assert [(c.values["adapter.k"], c.values["train.lr"]) for c in st.cells] == [
        (2, 1e-3), (2, 1e-4), (5, 1e-3), (5, 1e-4), (10, 1e-3), (10, 1e-4)
    ]
    assert len({c.hash for c in st.cells}) == 6
    assert all(c.config.adapter.k == c.values["adapter.k"] for c in st.cells)


def test_zip_moves_fields_together(tmp_path: Path) -> None:
    doc = {
        "name": "z", "base": BASE, "axes": {"adapter.k": [2, 5]},
        "zip": [{"llm.prompt_style": ["chat", "plain"], "llm.casing": ["lower", "upper"]}],
    }
    st = load_study(write(tmp_path, doc))
    pairs = {(c.config.llm.prompt_style, c.config.llm.casing) for c in st.cells}
    assert pairs == {("chat", "lower"), ("plain", "upper")}
    assert len(st.cells) == 4


def test_zip_lists_must_have_equal_lengths(tmp_path: Path) -> None:
    doc = {"name": "z", "base": BASE, "zip": [{"llm.prompt_style": ["chat", "plain"], "llm.casing": ["lower"]}]}
    with pytest.raises(ConfigError, match="equal lengths"):
        load_study(write(tmp_path, doc))


def test_exclude_and_include(tmp_path: Path) -> None:
    doc = {
        "name": "ie", "base": BASE, "axes": {"adapter.k": [2, 5], "adapter.projector": ["linear", "conv1d"]},
        "exclude": [{"adapter.k": 2, "adapter.projector": "conv1d"}],
        "include": [{"adapter.projector": "qformer", "adapter.k": 3}, {"adapter.k": 5, "adapter.projector": "linear"}],
    }
    st = load_study(write(tmp_path, doc))
    cells = [(c.config.adapter.k, c.config.adapter.projector) for c in st.cells]
    assert (2, "conv1d") not in cells
    assert (3, "qformer") in cells
    assert cells.count((5, "linear")) == 1  # an include that repeats a product cell is the same run
    assert len(cells) == 4


def test_run_names_are_readable(tmp_path: Path) -> None:
    assert run_name({"encoder.name": "pack:whisper-tiny.en", "llm.name": "hf:HuggingFaceTB/SmolLM2-135M-Instruct",
                     "adapter.projector": "linear", "adapter.k": 5, "encoder.trainable": False}) == (
        "whisper-tiny.en|SmolLM2-135M-Instruct|linear|k5|frozen"
    )


def test_one_factor_at_a_time_cells_are_named_by_what_they_change(tmp_path: Path) -> None:
    doc = {
        "name": "ofat", "base": BASE, "axes": {"adapter.k": [5]},
        "include": [{"train.lr": 3e-3}, {"llm.lora.enabled": True, "train.lr": 1e-3}, {"llm.system_prompt": ""}],
    }
    st = load_study(write(tmp_path, doc))
    # product axes always appear; include-only keys only where the cell leaves the base value
    assert [c.name for c in st.cells] == ["k5", "k5|lr=0.003", "k5|lora", "k5|system_prompt=''"]
    assert all(set(c.values) == {"adapter.k", "train.lr", "llm.lora.enabled", "llm.system_prompt"} for c in st.cells)


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("name: v\nbase:\n  train:\n    lrr: 0.1\n", 4, "did you mean 'lr'"),
        ("name: v\naxes:\n  adapter.k: [2, zero]\n", 3, "expected int"),
        ("name: v\naxes:\n  adapter.k: [0, 5]\n", 3, "expected >= 1"),
        ("name: v\nbase:\n  adapter: {projector: linaer}\n", 3, "did you mean 'linear'"),
        ("name: v\naxes:\n  encoder.name: ['pack:whisper-tiny', 'tiny:whisper']\n", 3, "whisper-tiny.en"),
        ("name: v\naxess:\n  adapter.k: [2]\n", 2, "did you mean 'axes'"),
        ("name: v\nbase:\n  llm: {name: 'tiny:lama'}\n", 3, "did you mean 'llama'"),
    ],
)
def test_validation_errors_name_file_line_and_choices(tmp_path: Path, text: str, line: int, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}:"), msg
    assert needle in msg


def test_missing_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="name"):
        load_study(write(tmp_path, {"base": BASE}))


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_validate(path: Path) -> None:
    st = load_study(path)
    assert st.cells, path
    assert len({c.hash for c in st.cells}) == len(st.cells)


# ------------------------------------------------------------------------------ cell identity
def test_cell_hash_is_stable_across_key_order_and_changes_with_values(tmp_path: Path) -> None:
    a = load_study(write(tmp_path, {"name": "h", "base": {**BASE, "train": {"lr": 1e-3, "seed": 1}}}, "a.yaml"))
    b_doc = {"name": "h", "base": {"train": {"seed": 1, "lr": 1e-3}, "adapter": {"hidden": 64},
                                   "llm": {"name": "tiny:llama"}, "encoder": {"name": "tiny:whisper"}}}
    b = load_study(write(tmp_path, b_doc, "b.yaml"))
    c = load_study(write(tmp_path, {"name": "h", "base": {**BASE, "train": {"lr": 1e-3, "seed": 2}}}, "c.yaml"))
    assert a.cells[0].hash == b.cells[0].hash == config_hash(a.cells[0].config)
    assert a.cells[0].hash != c.cells[0].hash


# ------------------------------------------------------------------------------ running
def _study_doc(libri_manifests: dict[str, Path], name: str) -> dict:
    return {
        "name": name,
        "base": {
            **BASE,
            "data": {"train": str(libri_manifests["dev-clean"]), "dev": str(libri_manifests["dev-clean"]),
                     "test": {"ls": str(libri_manifests["test-clean"])}},
            "train": {"max_steps": 6, "eval_every": 3, "eval_utterances": 2, "checkpoint_every": 2, "warmup_steps": 1},
            "decode": {"max_new_tokens": 4},
        },
        "axes": {"adapter.k": [2, 5]},
    }


@pytest.fixture(scope="module")
def libri_manifests(tmp_path_factory) -> dict[str, Path]:
    from harness.data.librispeech import read_librispeech
    from harness.data.manifest import write_manifest

    root = REPO.parent / "shared" / "data" / "librispeech-mini"
    if not root.is_dir():
        pytest.skip(f"{root} not found (the shared LibriSpeech sample)")
    out = tmp_path_factory.mktemp("manifests")
    paths = {}
    for split in ("dev-clean", "test-clean"):
        paths[split] = out / f"{split}.jsonl"
        write_manifest(paths[split], read_librispeech(root, split)[:4])
    return paths


def test_rerun_skips_finished_cells(tmp_path: Path, libri_manifests, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    st = load_study(write(tmp_path, _study_doc(libri_manifests, "rerun")))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = run_study(st, uri=uri, runs_root=tmp_path / "runs", progress=False)
    assert [o.status for o in first] == ["done", "done"]
    second = run_study(st, uri=uri, runs_root=tmp_path / "runs", progress=False)
    assert [o.status for o in second] == ["skipped-done", "skipped-done"]
    assert [o.run_id for o in second] == [o.run_id for o in first]


def test_study_logs_to_a_real_mlflow_server(tmp_path: Path, libri_manifests, monkeypatch) -> None:
    """Every per-step metric and the tags/artifacts of a cell arrive at an `mlflow server`; read back over REST."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    with mlflow_server(tmp_path) as url:
        st = load_study(write(tmp_path, _study_doc(libri_manifests, "rest")))
        outcomes = run_study(st, uri=url, runs_root=tmp_path / "runs", progress=False)
        assert [o.status for o in outcomes] == ["done", "done"]

        def get(path: str) -> dict:
            return json.loads(urllib.request.urlopen(url + path, timeout=10).read())

        for o in outcomes:
            hist = get(f"/api/2.0/mlflow/metrics/get-history?run_id={o.run_id}&metric_key=train/acc")["metrics"]
            assert sorted(m["step"] for m in hist) == [1, 2, 3, 4, 5, 6]  # every step, none twice
            run = get(f"/api/2.0/mlflow/runs/get?run_id={o.run_id}")["run"]
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            assert tags["harness.cell_hash"] == o.cell.hash
            assert tags["harness.study"] == "rest" and "harness.git_commit" in tags
            assert tags["axis.adapter.k"] == str(o.cell.config.adapter.k)
            metrics = {m["key"] for m in run["data"]["metrics"]}
            assert {"test/ls/wer", "emerged", "params/trainable", "dev/loss"} <= metrics
            arts = get(f"/api/2.0/mlflow/artifacts/list?run_id={o.run_id}")
            names = {f["path"] for f in arts.get("files", [])}
            assert {"config.yaml", "trainable.safetensors", "accuracy_curve.png", "transcripts"} <= names
        from mlflow.tracking import MlflowClient

        client = MlflowClient(url)
        exp = client.get_experiment_by_name("rest")
        assert set(find_cell_runs(client, exp.experiment_id, "rest")) == {c.hash for c in st.cells}


def test_cli_cell_runs_only_the_named_cells(tmp_path: Path, libri_manifests, monkeypatch) -> None:
    """`harness study run --cell`: a hash prefix or a run name picks the cells; the others stay new; a value
    that names no cell (or several) is one usage line, exit 2, and nothing runs."""
    from click.testing import CliRunner

    from harness.cli import main

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, _study_doc(libri_manifests, "pick"))
    st = load_study(path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runner = CliRunner()
    bad = runner.invoke(main, ["study", "run", str(path), "--tracking-uri", uri, "--cell", "no-such-cell"])
    assert bad.exit_code == 2 and "--cell" in bad.output and st.cells[1].name in bad.output, bad.output
    ok = runner.invoke(main, ["study", "run", str(path), "--tracking-uri", uri, "--no-progress",
                              "--cell", st.cells[1].hash[:8]])
    assert ok.exit_code == 0, ok.output
    statuses = {r["cell_hash"]: r["status"] for r in study_status(st, uri=uri)}
    assert statuses == {st.cells[0].hash: "new", st.cells[1].hash: "done"}
    again = runner.invoke(main, ["study", "run", str(path), "--tracking-uri", uri, "--no-progress",
                                 "--cell", st.cells[0].name])
    assert again.exit_code == 0, again.output
    assert {r["status"] for r in study_status(st, uri=uri)} == {"done"}
