"""analysis/ against a real MLflow store: a tiny study trained on real LibriSpeech audio, then its
DataFrames, tables, figures, HTML report (rendered by headless Chromium) and the notebook."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from analysis import data, figures, report, tables
from harness.data.manifest import write_manifest
from harness.experiments.grid import run_study
from harness.tracking.store import make_client
from harness.experiments.study import load_study

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")

STUDY_YAML = """\
name: analysis_tiny
description: tiny models on real LibriSpeech audio, for the analysis tests
base:
  data:
    train: {d}/train.jsonl
    dev: {d}/dev.jsonl
    test: {{test-clean: {d}/test-clean.jsonl}}
  encoder: {{name: "tiny:whisper"}}
  llm: {{name: "tiny:llama", prompt_style: plain}}
  adapter: {{projector: linear, hidden: 64}}
  train: {{max_steps: 10, eval_every: 5, eval_utterances: 4, warmup_steps: 2, batch_size: 2, checkpoint_every: 10,
          device: cpu}}
  decode: {{max_new_tokens: 8, batch_size: 8}}
axes:
  adapter.k: [2, 5]
include:
  - {{encoder.name: "tiny:hubert"}}                          # a second encoder (k=5): paper Fig. 1's shape
  - {{adapter.k: 3, data.dev: {d}/no-such-manifest.jsonl}}   # fails at setup: a FAILED run with harness.error
"""


@pytest.fixture(scope="session")
def store(tmp_path_factory, libri):
    """Run the study once: three finished cells (Whisper k=2, k=5; HuBERT k=5) and one failed cell, in SQLite."""
    tmp = tmp_path_factory.mktemp("analysis_study")
    # The shortest utterances keep the study near a minute on two CPU cores.
    dev_clean = sorted(libri["dev-clean"], key=lambda u: u.duration)
    test_clean = sorted(libri["test-clean"], key=lambda u: u.duration)
    write_manifest(tmp / "train.jsonl", dev_clean[:8])
    write_manifest(tmp / "dev.jsonl", dev_clean[:4])
    write_manifest(tmp / "test-clean.jsonl", test_clean[:5])
    path = tmp / "study.yaml"
    path.write_text(STUDY_YAML.format(d=tmp.as_posix()))
    uri = f"sqlite:///{tmp}/mlflow.db"
    # Artifacts inside tmp too (a SQLite store would put them in ./mlruns of the working directory).
    make_client(uri).create_experiment("analysis_tiny", artifact_location=(tmp / "artifacts").as_uri())
    outcomes = run_study(load_study(path), uri=uri, runs_root=tmp / "runs", progress=False)
    statuses = [o.status for o in outcomes]
    assert statuses == ["done", "done", "done", "failed"], [(o.cell.name, o.error) for o in outcomes]
    return {"tmp": tmp, "study": path, "uri": uri}


@pytest.fixture(scope="session")
def runs(store):
    return data.load_runs(store["study"], tracking_uri=store["uri"])


@pytest.fixture(scope="session")
def runs_ci(store, runs):
    return tables.add_intervals(runs, tracking_uri=store["uri"], n_resamples=500)


@pytest.fixture(scope="session")
def histories(store, runs):
    return data.load_histories(store["study"], tracking_uri=store["uri"], runs=runs)


# ------------------------------------------------------------------------------------------------ data


def test_load_runs(store, runs):
    study = load_study(store["study"])
    assert list(runs["cell_hash"]) == [c.hash for c in study.cells]  # study order
    assert list(runs["run_name"]) == [c.name for c in study.cells]
    # Names carry every product axis, and an include's keys where it leaves the base value;
    # a path-valued axis shows its folder and file stem.
    names = list(runs["run_name"])
    assert names[:3] == ["k2", "k5", "k5|hubert"]
    assert names[3].startswith("k3|dev=") and names[3].endswith("/no-such-manifest")
    assert list(runs["status"]) == ["FINISHED", "FINISHED", "FINISHED", "FAILED"]
    assert list(runs["state"]) == ["done", "done", "done", "failed"]
    assert list(runs["adapter.k"]) == [2, 5, 5, 3]  # typed; k of the HuBERT cell comes from its config
    assert runs.attrs["axes"] == ["adapter.k", "encoder.name", "data.dev"]
    assert list(runs["encoder.name"]) == ["tiny:whisper", "tiny:whisper", "tiny:hubert", "tiny:whisper"]
    assert runs["encoder.trainable"].tolist() == [False] * 4
    fin = runs[runs.status == "FINISHED"]
    for col in ("test/test-clean/wer", "test/test-clean/ref_words", "params/trainable", "params/projector",
                "train/steps", "emerged", "dev/wer"):
        assert fin[col].notna().all(), col
    assert (fin["train/steps"] == 10).all()
    assert fin["error"].eq("").all()
    failed = runs.iloc[3]
    assert "FileNotFoundError" in failed["error"] and "no-such-manifest" in failed["error"]
    assert pd.isna(failed["test/test-clean/wer"])


def test_load_runs_unknown_and_stale(store, runs, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(store["study"].read_text().replace("name: analysis_tiny", "name: never_ran"))
    empty = data.load_runs(other, tracking_uri=store["uri"])
    assert empty.empty and {"run_id", "status", "adapter.k", "error"} <= set(empty.columns)
    assert len(data.missing_cells(other, empty)) == 4 and set(data.missing_cells(other, empty)["state"]) == {"not run"}

    # The same study with k=5 dropped: that run is stale (its cell is gone) and left out unless asked for.
    edited = tmp_path / "edited.yaml"
    edited.write_text(store["study"].read_text().replace("adapter.k: [2, 5]", "adapter.k: [2]"))
    names = list(data.load_runs(edited, tracking_uri=store["uri"])["run_name"])
    assert names[:2] == ["k2", "k5|hubert"] and names[2].startswith("k3|dev=") and len(names) == 3
    with_stale = data.load_runs(edited, tracking_uri=store["uri"], include_stale=True)
    assert len(with_stale) == 4
    assert with_stale.set_index("run_name").loc["k5", "in_study"] == False  # noqa: E712


def test_load_histories(histories, runs):
    assert list(histories.columns) == ["run_id", "run_name", "metric", "step", "value"]
    assert not histories.duplicated(["run_id", "metric", "step"]).any()
    for run_id in runs.run_id[:3]:
        h = histories[histories.run_id == run_id]
        assert h[h.metric == "train/acc"].step.tolist() == list(range(1, 11))
        assert h[h.metric == "dev/wer"].step.tolist() == [5, 10]
        assert set(h.metric) == set(data.DEFAULT_HISTORY_METRICS)
    assert set(histories.run_id) <= set(runs.run_id)


def test_load_transcripts(store, runs):
    row = runs.iloc[0]
    t = data.load_transcripts(row.run_id, "test-clean", tracking_uri=store["uri"])
    assert list(t.columns[:5]) == list(data.TRANSCRIPT_COLUMNS) and len(t) == 5
    assert t["id"].str.match(r"^\d+-\d+-\d+$").all()  # ids stay strings
    assert t.ref_words.sum() == row["test/test-clean/ref_words"]
    assert t.errors.sum() / t.ref_words.sum() == pytest.approx(row["test/test-clean/wer"])
    with pytest.raises(FileNotFoundError, match="no transcripts table for split 'test-other'.*test-clean"):
        data.load_transcripts(row.run_id, "test-other", tracking_uri=store["uri"])


def test_missing_cells(store, runs):
    missing = data.missing_cells(store["study"], runs)
    assert len(missing) == 1
    m = missing.iloc[0]
    assert m["state"] == "failed" and m["adapter.k"] == 3 and m["run_id"] == runs.iloc[3]["run_id"]
    assert "no-such-manifest" in m["error"]


# ------------------------------------------------------------------------------------------------ tables


def test_intervals_and_parameter_check(runs_ci):
    fin = runs_ci[runs_ci.status == "FINISHED"]
    assert (fin["ci/test-clean/lo"] <= fin["test/test-clean/wer"] + 1e-12).all()
    assert (fin["test/test-clean/wer"] <= fin["ci/test-clean/hi"] + 1e-12).all()
    assert runs_ci.iloc[3][["ci/test-clean/lo", "ci/test-clean/hi"]].isna().all()  # the failed run has none
    checks = tables.check_parameters(runs_ci)
    # tiny:whisper and tiny:hubert are 32 wide, tiny:llama 64: k*32*64 + 64 + 64*64 + 64, what the trainer counted.
    k2, k5 = 2 * 32 * 64 + 128 + 64 * 64, 5 * 32 * 64 + 128 + 64 * 64
    assert checks["projector_formula"].iloc[:3].tolist() == [k2, k5, k5]
    assert checks["params_check"].iloc[:3].tolist() == ["ok"] * 3
    assert checks["params_ok"].iloc[:3].tolist() == [True] * 3
    assert checks["params_check"].iloc[3].startswith("n/a")
    # The widths come from what training logged, not from loading the models again.
    assert fin["model/d_enc"].tolist() == [32.0] * len(fin) and fin["model/d_llm"].tolist() == [64.0] * len(fin)
    wider = runs_ci.copy()
    wider["model/d_llm"] = 65.0
    assert tables.check_parameters(wider)["d_llm"].iloc[:3].tolist() == [65, 65, 65]


def test_parameter_mismatch_is_flagged(runs_ci):
    bad = runs_ci.copy()
    bad.loc[0, "params/trainable"] += 1  # something besides the projector trained
    bad.loc[1, "encoder.trainable"] = True
    bad.loc[1, "params/trainable"] += 1000
    checks = tables.check_parameters(bad)
    assert checks.loc[0, "params_check"].startswith("MISMATCH: trainable") and checks.loc[0, "params_ok"] is False
    assert checks.loc[1, "params_check"] == "ok (+1.00k encoder)"


def test_tables_render_and_save(runs_ci, tmp_path):
    t = tables.runs_table(runs_ci)
    assert list(t.display.index) == list(runs_ci.run_name)
    assert t.display.loc[runs_ci.run_name.iloc[3], "state"] == "failed" and runs_ci.run_name.iloc[3].startswith("k3|")
    assert re.fullmatch(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", t.display.loc["k2", "WER test-clean (%)"])
    paths = t.save(tmp_path)
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert "| run | state |" in paths["md"].read_text()
    tex = paths["tex"].read_text()
    assert "\\begin{tabular}" in tex and tex.count("\\\\") == len(runs_ci) + 1
    assert "_" not in tex.replace("\\_", "")  # every underscore escaped for LaTeX
    csv = pd.read_csv(paths["csv"])
    assert csv["test-clean WER %"].iloc[0] == pytest.approx(100 * runs_ci["test/test-clean/wer"].iloc[0])

    grid = tables.pivot(runs_ci, "adapter.k", "encoder.name")
    assert grid.display.index.tolist() == ["2", "5", "3"] and grid.display.columns.tolist() == ["whisper", "hubert"]
    assert grid.display.loc["3", "whisper"] == "failed" and grid.display.loc["2", "hubert"] == "—"
    assert grid.display.loc["5", "hubert"].endswith("]")  # WER [CI]
    steps = tables.pivot(runs_ci[runs_ci.status == "FINISHED"], "run_name", value="train/steps")
    assert steps.display.iloc[:, 0].tolist() == ["10", "10", "10"]
    with pytest.raises(KeyError, match="not a column"):
        tables.pivot(runs_ci, "encoder.nam")


def test_paper_numbers_beside_ours(runs_ci):
    # The same runs relabelled as the paper's Whisper-large-v2 + Vicuna at k=5, H=2048: the paper's
    # number must appear beside ours, and the (now wrong) parameter count must be flagged.
    like = runs_ci[runs_ci.status == "FINISHED"].copy()
    like["encoder.name"] = ["hf:openai/whisper-large-v2", "hf:openai/whisper-medium", "hf:microsoft/wavlm-large"]
    like["llm.name"] = "hf:lmsys/vicuna-7b-v1.5"
    like["adapter.k"], like["adapter.hidden"] = 5, 2048
    like = like.drop(columns=["model/d_enc", "model/d_llm"])  # what was built no longer matches the names
    t5 = tables.table5(like)
    assert t5.display.index.tolist() == ["Whisper large", "Whisper medium", "WavLM Large"]
    assert t5.display["paper WER"].tolist() == ["2.58", "2.72", "2.13"]  # test-clean only: the study has no test-other
    assert t5.display["paper projector"].tolist() == ["21.50M", "18.88M", "18.88M"]
    assert t5.display["hidden"].tolist() == ["1,280", "1,024", "1,024"]
    assert all(c.startswith("MISMATCH: projector") for c in t5.display["params check"])
    t2 = tables.table2(like)
    assert t2.display.columns.tolist() == ["Vicuna-7B-v1.5", "Vicuna-7B-v1.5 (paper)"]
    assert t2.display["Vicuna-7B-v1.5 (paper)"].tolist() == ["2.58", "2.72", "2.13"]
    assert "(paper)" in t2.to_markdown() and "Vicuna-7B-v1.5 (paper)" in t2.to_latex()
    # Off-recipe (k=2) runs get no paper number.
    like["adapter.k"] = 2
    assert "paper WER" not in tables.table5(like).display.columns
    t4 = tables.table4(like)
    assert t4.display.index.tolist() == [
        "Vicuna-7B-v1.5 (k2)", "Vicuna-7B-v1.5 (k5)", "Vicuna-7B-v1.5 (k5|hubert)"
    ]


def test_pivot_refuses_to_hide_a_varying_axis(runs_ci):
    with pytest.raises(ValueError, match=r"ambiguous.*\['adapter.k', 'encoder.name'\]"):
        tables.pivot(runs_ci[runs_ci.status == "FINISHED"], "llm.name")


# ------------------------------------------------------------------------------------------------ figures


def _check_files(fig):
    assert not fig.skipped, fig.skipped
    assert [p.suffix for p in fig.paths] == [".png", ".svg"]
    assert all(p.stat().st_size > 1000 for p in fig.paths)
    assert fig.paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in fig.paths[1].read_bytes()[:2000]


def test_figures(runs_ci, histories, tmp_path):
    figs = {f.name: f for f in figures.all_figures(runs_ci, histories, out_dir=tmp_path)}
    for name in ("emergence_by_encoder", "wer_by_run", "wer_vs_k", "wer_vs_params"):
        _check_files(figs[name])
        assert figs[name].caption
    assert "paper Fig. 1" in figs["emergence_by_encoder"].caption
    assert "does not vary llm.name" in figs["emergence_by_llm"].skipped
    assert "encoder.trainable" in figs["frozen_vs_trainable"].skipped
    assert figs["emergence_by_llm"].paths == []


def test_figures_with_emergence_and_trainable_encoder(runs_ci, histories, tmp_path):
    # The same curves, one marked as emerged at step 5 and one as trained with its encoder.
    df = runs_ci.copy()
    df.loc[0, "emergence_step"], df.loc[0, "emerged"] = 5, 1
    df.loc[1, "encoder.trainable"] = True
    _check_files(figures.emergence_figure(df, histories, out_dir=tmp_path, by="adapter.k"))
    fig = figures.frozen_vs_trainable_figure(df, histories, out_dir=tmp_path)
    _check_files(fig)
    assert "frozen" in fig.caption
    assert figures.emergence_figure(df.iloc[0:0], histories.iloc[0:0], out_dir=tmp_path).skipped
    assert figures.wer_figure(df[df.status == "FAILED"], out_dir=tmp_path).skipped == "no finished run with a test WER"


# ------------------------------------------------------------------------------------------------ report


@pytest.fixture(scope="session")
def report_page(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return report.write_report(store["study"], out_dir=out, tracking_uri=store["uri"], n_resamples=500)


def test_report_files_and_html(report_page, store):
    out = report_page.parent
    assert report_page.name == "report.html"
    page = report_page.read_text()
    assert page.count('src="data:image/png;base64,') == 4  # emergence by encoder, WER, WER vs k, WER vs params
    assert 'id="table-runs"' in page and 'id="table-pivot_adapter_k_x_encoder_name"' in page
    assert 'id="table-paper_table2"' in page  # the published tables, for reference
    assert 'id="missing-cells"' in page and "no-such-manifest" in page and "1 of 4 cells" in page
    assert "adapter.k: [2, 5]" in page  # the study file
    assert "Not drawn:" in page and "does not vary llm.name" in page
    for f in ("tables/runs.md", "tables/runs.csv", "tables/runs.tex", "tables/pivot_adapter_k_x_encoder_name.md",
              "figures/wer_vs_k.png", "figures/wer_vs_k.svg", "runs.csv"):
        assert (out / f).stat().st_size > 0, f
    assert not re.search(r"<(script|link)\b", page) and "http://" not in page  # self-contained

    client = make_client(store["uri"])
    parent = data.study_parent_run(store["study"], tracking_uri=store["uri"])
    assert parent.data.tags["harness.kind"] == "study"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/figures", "report/tables", "report/runs.csv"} <= logged


def test_report_of_a_study_that_never_ran(store, tmp_path):
    other = tmp_path / "never.yaml"
    other.write_text(store["study"].read_text().replace("name: analysis_tiny", "name: never_ran_report"))
    page = report.write_report(other, out_dir=tmp_path / "out", tracking_uri=store["uri"])
    text = page.read_text()
    assert "0 finished" in text and "4 of 4 cells have no finished run" in text and 'id="table-runs"' in text
    assert "not run" in text and "data:image/png" not in text


def test_report_default_out_dir(store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    page = report.write_report(store["study"], tracking_uri=store["uri"], log_to_mlflow=False, n_resamples=200)
    assert page.resolve() == (tmp_path / "reports" / "analysis_tiny" / "report.html").resolve()


_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => i.complete ? i.naturalWidth + "x" + i.naturalHeight : "pending");
  const out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify({imgs, tables: document.querySelectorAll("table.results").length,
                                    rows: document.querySelectorAll("table.results tbody tr").length});
  document.body.appendChild(out);
});
</script>"""


def test_report_renders_in_chromium(report_page, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium not installed (/usr/bin/chromium; Debian: apt-get install chromium)")
    # A copy of the page with a probe that writes each image's decoded size into the DOM.
    probe = tmp_path / "probe.html"
    probe.write_text(report_page.read_text().replace("</body>", _PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([str(CHROMIUM), *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"no probe output; chromium said: {dom.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(result["imgs"]) == 4
    for size in result["imgs"]:
        w, h = (int(x) for x in size.split("x"))
        assert w > 200 and h > 100, result  # decoded, not a broken-image icon
    assert result["tables"] >= 5 and result["rows"] >= 4 + 3 + 5  # runs, pivot, published tables

    shot = tmp_path / "page.png"
    subprocess.run([str(CHROMIUM), *flags, "--window-size=1200,1600", f"--screenshot={shot}", report_page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[0] == 1600 and pixels[..., :3].std() > 0.05  # not a blank page


# ------------------------------------------------------------------------------------------------ notebook


def test_notebook_executes(store, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("HARNESS_STUDY", str(store["study"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    nb = nbformat.read(ROOT / "notebooks" / "explore_study.ipynb", as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the emergence figure
    html_out = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert 'id="table-runs"' in html_out and "k2" in html_out


def test_emergence_table_names_every_cell_and_its_figures(store, runs, capsys):
    """`python -m analysis.emergence_table` on the real store: one row per run, named by run name and
    cell hash, with dev accuracy at each evaluation (steps 5 and 10) and the test WER."""
    from analysis import emergence_table

    emergence_table.main([str(store["study"]), "--tracking-uri", store["uri"]])
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("|")][2:]  # past header and rule
    assert "| cell | hash | state | emergence step | minutes to emergence |" in text
    assert len(lines) == len(runs) == 4
    for (_, r), line in zip(runs.iterrows(), lines):
        assert r.run_name.replace("|", "\\|") in line and str(r.cell_hash)[:12] in line  # Markdown escapes "|"
    table = emergence_table.emergence_table(runs, data.load_histories(store["study"], emergence_table.HISTORY,
                                                                     tracking_uri=store["uri"], runs=runs))
    done = table[table.state == "done"]
    assert len(done) == 3
    assert all(re.fullmatch(r"\d\.\d{3}@5 / \d\.\d{3}@10", v) for v in done["dev acc at steps"])
    assert all(re.fullmatch(r"\d+\.\d", v) for v in done["WER test-clean (%)"])
    assert (table[table.state == "failed"]["WER test-clean (%)"] == "-").all()
