"""Findings tested on a real study in a real MLflow store: tiny models trained on real LibriSpeech audio,
three seeds a cell. A planted effect must come out "reproduced", a null "inconclusive", a false claim
"refuted"; the table is written as Markdown, HTML and CSV and logged to the study's parent run."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis import data, findings, replicates, report
from harness.data.manifest import write_manifest
from harness.experiments.grid import run_study
from harness.experiments.study import load_study
from harness.tracking.store import make_client

# decode.max_new_tokens is the planted effect: the untrained tiny LLM rambles in random characters, so a
# 1-token cap writes one "word" (WER exactly 100 %) while an 80-token one inserts words into the short
# references. train.lr 1e-7 vs 2e-7 over 3 steps is a null.
STUDY_YAML = """\
name: findings_tiny
base:
  data:
    train: {d}/train.jsonl
    dev: {d}/dev.jsonl
    test: {{test-clean: {d}/test-clean.jsonl}}
  encoder: {{name: "tiny:whisper"}}
  llm: {{name: "tiny:llama", prompt_style: plain}}
  adapter: {{projector: linear, hidden: 32}}
  train: {{max_steps: 3, eval_every: 3, eval_utterances: 2, warmup_steps: 1, batch_size: 2, checkpoint_every: 3,
          device: cpu}}
  decode: {{batch_size: 8, tokens_per_second: null}}
axes:
  decode.max_new_tokens: [1, 80]
  train.lr: [1.0e-7, 2.0e-7]
seeds: [0, 1, 2]
findings:
  - claim: a 1-token cap inserts fewer words
    compare: {{decode.max_new_tokens: [1, 80]}}
    metric: test/wer
    expect: lower
    paper: planted
  - claim: the learning rate matters at 3 steps
    compare: {{train.lr: [1.0e-7, 2.0e-7]}}
    metric: test/wer
    expect: lower
  - claim: the 1-token cap is worse
    compare: {{decode.max_new_tokens: [1, 80]}}
    metric: test/wer
    expect: higher
  - claim: training emerges in 3 steps
    metric: emerged
    expect: higher
    than: 0.5
  - claim: emergence step does not depend on the cap
    compare: {{decode.max_new_tokens: [1, 80]}}
    metric: emergence_step
    expect: lower
    where: {{train.lr: 1.0e-7}}
  - claim: dev accuracy at step 3 by learning rate
    compare: {{train.lr: [1.0e-7, 2.0e-7]}}
    metric: dev/acc@3
    expect: higher
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory, libri):
    tmp = tmp_path_factory.mktemp("findings_study")
    dev_clean = sorted(libri["dev-clean"], key=lambda u: u.duration)
    write_manifest(tmp / "train.jsonl", dev_clean[:4])
    write_manifest(tmp / "dev.jsonl", dev_clean[:2])
    write_manifest(tmp / "test-clean.jsonl", sorted(libri["test-clean"], key=lambda u: u.duration)[:6])
    path = tmp / "study.yaml"
    path.write_text(STUDY_YAML.format(d=tmp.as_posix()))
    uri = f"sqlite:///{tmp}/mlflow.db"
    make_client(uri).create_experiment("findings_tiny", artifact_location=(tmp / "artifacts").as_uri())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp / "cache"))
        outcomes = run_study(load_study(path), uri=uri, runs_root=tmp / "runs", progress=False)
    assert [o.status for o in outcomes] == ["done"] * 12, [(o.cell.name, o.error) for o in outcomes]
    return {"tmp": tmp, "study": path, "uri": uri}


@pytest.fixture(scope="module")
def results(store):
    return {r.finding.claim: r for r in findings.evaluate_findings(store["study"], tracking_uri=store["uri"],
                                                                    n_resamples=1000)}


def test_planted_effect_is_reproduced_with_paired_intervals(store, results):
    r = results["a 1-token cap inserts fewer words"]
    assert r.verdict == "reproduced" and r.metric == "test/test-clean/wer"
    assert r.a.n_runs == r.b.n_runs == 6  # both learning rates, three seeds each: matched on the other factor
    assert r.effect.hi < 0 and r.effect.method == "paired bootstrap over utterances"
    assert r.a.estimate.lo <= r.a.estimate.value <= r.a.estimate.hi
    # The pooled WER is the corpus WER over every run of the arm, as the runs logged it.
    runs = data.load_runs(store["study"], tracking_uri=store["uri"])
    arm = runs[runs["decode.max_new_tokens"] == 1]
    pooled = (arm["test/test-clean/wer"] * arm["test/test-clean/ref_words"]).sum() / arm["test/test-clean/ref_words"].sum()
    assert r.a.estimate.value == pytest.approx(pooled)
    assert r.effect.effect == pytest.approx(r.a.estimate.value - r.b.estimate.value)


def test_the_same_effect_claimed_the_other_way_is_refuted(results):
    assert results["the 1-token cap is worse"].verdict == "refuted"


def test_a_null_is_inconclusive(results):
    r = results["the learning rate matters at 3 steps"]
    assert r.verdict == "inconclusive" and r.effect.contains_zero()
    acc = results["dev accuracy at step 3 by learning rate"]
    assert acc.verdict == "inconclusive" and acc.a.n_runs == 6 and acc.metric == "dev/acc@3"


def test_one_arm_rate_and_censored_emergence(results):
    r = results["training emerges in 3 steps"]
    assert r.verdict == "refuted" and r.a.estimate.value == 0 and r.a.n_runs == 12
    assert r.a.estimate.hi == pytest.approx(1 - 0.025 ** (1 / 12))  # Clopper-Pearson, 0 of 12
    e = results["emergence step does not depend on the cap"]
    assert e.a.n_runs == e.b.n_runs == 3 and e.a.n_censored == e.b.n_censored == 3  # where: one learning rate
    assert e.a.estimate.value == 3 and e.verdict == "inconclusive" and "never emerged" in e.note


def test_findings_table_renders_and_the_report_logs_it(store, results, tmp_path):
    table = findings.findings_table(list(results.values()))
    md = table.to_markdown()
    assert "| a 1-token cap inserts fewer words | planted |" in md and "reproduced" in md and "inconclusive" in md
    assert list(table.data["verdict"]) == [r.verdict for r in results.values()]
    assert not table.data["effect"].isna().any()
    page = report.write_report(store["study"], out_dir=tmp_path / "rep", tracking_uri=store["uri"], n_resamples=300)
    assert (tmp_path / "rep" / "tables" / "findings.csv").exists()
    html = page.read_text()
    assert 'id="table-findings"' in html and "reproduced" in html
    csv = pd.read_csv(tmp_path / "rep" / "tables" / "findings.csv")
    assert list(csv["verdict"]) == list(table.data["verdict"])
    parent = data.study_parent_run(store["study"], tracking_uri=store["uri"])
    logged = {f.path for f in make_client(store["uri"]).list_artifacts(parent.info.run_id, "report/tables")}
    assert "report/tables/findings.md" in logged and "report/tables/findings.csv" in logged


def test_replicates_table_groups_seeds(store, results):
    runs = data.load_runs(store["study"], tracking_uri=store["uri"])
    histories = data.load_histories(store["study"], tracking_uri=store["uri"], runs=runs)
    t = replicates.replicates_table(runs, histories, tracking_uri=store["uri"], n_resamples=300)
    assert len(t.data) == 4 and (t.data["seeds"] == 3).all()
    row = t.data.iloc[0]
    assert row["test/test-clean/wer"] == pytest.approx(
        runs.iloc[:3].eval("`test/test-clean/wer` * `test/test-clean/ref_words`").sum()
        / runs.iloc[:3]["test/test-clean/ref_words"].sum())
    assert not math.isnan(row["test/test-clean/wer_lo"])


def test_the_report_command_prints_the_findings_table(store, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HARNESS_CACHE": str(store["tmp"] / "cache")}
    out = subprocess.run([sys.executable, "-m", "harness.cli", "study", "report", str(store["study"]),
                          "--out", str(tmp_path / "r"), "--tracking-uri", store["uri"]],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "**Findings**" in out.stdout and "| a 1-token cap inserts fewer words |" in out.stdout
    assert out.stdout.rstrip().endswith("report.html")
