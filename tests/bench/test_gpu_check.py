"""`python -m harness.bench.gpu_check.check` in its reduced CPU mode: it runs end to end, as the GPU machine runs it
(from the repository root, no install, without MLflow, Optuna, jiwer or soundfile), and writes the JSON and
the Markdown table with every section's figures; a section that fails or runs out of time is recorded and
the others still run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ABSENT = ("mlflow", "optuna", "jiwer", "soundfile")
"""Not on the GPU machine: the check must neither import them nor need them."""
BLOCKER = """
import importlib.machinery

_find = importlib.machinery.PathFinder.find_spec


def _find_spec(cls, fullname, path=None, target=None):
    if fullname.split(".")[0] in {names!r}:
        return None  # as if not installed: find_spec says None, import raises ModuleNotFoundError
    return _find(fullname, path, target)


importlib.machinery.PathFinder.find_spec = classmethod(_find_spec)
"""


def _env(tmp_path: Path, *, block: bool = False) -> dict[str, str]:
    """OMP_NUM_THREADS=1, the repository on the path; ``block``: the absent packages made unimportable, as there."""
    paths = [str(REPO)]
    if block:  # a sitecustomize (run at every interpreter's start, the check's children too) hides them from imports
        root = tmp_path / "absent"
        root.mkdir(exist_ok=True)
        (root / "sitecustomize.py").write_text(BLOCKER.format(names=ABSENT))
        paths.insert(0, str(root))
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join(paths),
            "HARNESS_CACHE": str(tmp_path / "cache")}


def test_importing_the_check_imports_no_tracking_or_audio_packages(tmp_path: Path) -> None:
    code = ("import sys, harness.bench.gpu_check.check, harness.bench.gpu_check.models, harness.bench.gpu_check.sections, harness.bench.gpu_check.dist, "
            f"harness.bench.gpu_check.report; print([m for m in {ABSENT!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _check_measure(s: dict) -> None:
    t, d = s["train"], s["decode"]
    for v in ("ours", "reference"):
        assert t[v]["timed_steps"] >= 1 and t[v]["seconds_per_step"] > 0 and t[v]["audio_sec_per_sec"] > 0
        assert 0 < t[v]["useful_flops_fraction"] < 2 and t[v]["peak_rss_gb"] > 0.05
    assert t["ours"]["settings"]["input_mode"] == "native" and t["reference"]["settings"]["input_mode"] == "pad30"
    assert t["reference"]["settings"]["full_vocab_logits"] is True and t["ours"]["settings"]["share_prefix"] is True
    assert t["speedup"] > 1  # cached native-length frames against 30-s input encoded at every step
    assert t["matmul"]["flops_per_second"] > 1e8
    assert d["identical_transcripts"] is True and d["compared"] == d["utterances"] >= 2 and d["distinct_hypotheses"] >= 2
    assert s["params"]["llm"] > 0


def test_cpu_mode_runs_every_section_and_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.bench.gpu_check.check", "--cpu", "--out", str(out), "--budget-s", "400"]
    run = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path, block=True), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["mode"] == "cpu" and {"torch", "python", "transformers", "cpu_count"} <= set(r["machine"])
    secs = r["sections"]
    assert list(secs) == ["measure:tiny", "measure:tiny-bf16", "numerics:tiny", "compile:tiny", "distributed:tiny"]
    assert {n: s["status"] for n, s in secs.items()} == dict.fromkeys(secs, "ok")
    for name in ("measure:tiny", "measure:tiny-bf16"):
        _check_measure(secs[name])
    n = secs["numerics:tiny"]["result"]
    assert n["passed"] is True and len(n["losses_tested"]) == 3 and min(n["grad_cosine"]) >= 0.99
    c = secs["compile:tiny"]
    assert c["backend"] == "eager" and c["compiled"]["timed_steps"] >= 1 and c["compiled"]["loss_max_rel_diff_vs_eager"] < 1e-3
    dist = secs["distributed:tiny"]
    assert dist["setup"]["backend"] == "gloo" and "NCCL needs >= 2 GPUs" in dist["setup"]["note"]
    assert dist["result"]["ddp"]["passed"] and dist["result"]["fsdp"]["passed"]
    assert dist["result"]["fsdp"]["llm_params_per_rank"] < dist["result"]["ddp"]["llm_params_per_rank"]
    assert r["summary"]["all_ok"] is True and r["summary"]["numerics_passed"] is True
    assert r["summary"]["identical_transcripts:tiny"] is True and r["wall_seconds"] < r["budget_s"]
    md = (out / "gpu_check.md").read_text()
    for text in ("| section | measure |", "transcripts identical", "matmul rate", "torch.compile", "DDP (gloo", "FSDP (gloo",
                 "numerics: tiny", "passed", f"torch {r['machine']['torch']}"):
        assert text in md, text
    assert "ERROR" not in md and "FAILED" not in md and "TIMEOUT" not in md


def test_a_failing_or_timed_out_section_is_recorded_and_the_table_shows_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.bench.gpu_check.check import section
    from harness.bench.gpu_check.report import summary, table

    for k, v in _env(tmp_path).items():
        monkeypatch.setenv(k, v)
    ok = section("numerics:tiny", 120, cpu=True, isolate=True, out_dir=tmp_path)  # in a child process, as on the GPU
    assert ok["status"] == "ok" and ok["result"]["passed"] is True
    assert (tmp_path / "sections" / "numerics_tiny.json").exists() and (tmp_path / "logs" / "numerics_tiny.log").exists()
    slow = section("measure:tiny", 2, cpu=True, isolate=True, out_dir=tmp_path)  # killed at its limit
    assert slow["status"] == "timeout" and "timed out after 2 s" in slow["error"]
    bad = section("measure:no-such-shape", 30, cpu=True, isolate=False, out_dir=tmp_path)
    assert bad["status"] == "error" and "no-such-shape" in bad["error"]
    r = {"machine": {"cpu_count": 2, "torch_threads": 1, "torch": "x", "transformers": "y", "python": "z"}, "mode": "cpu",
         "budget_s": 60, "wall_seconds": 10, "sections": {"numerics:tiny": ok, "measure:tiny": slow, "measure:no-such-shape": bad}}
    r["summary"] = summary(r)
    assert r["summary"]["all_ok"] is False and r["summary"]["numerics_passed"] is True
    md = table(r)
    assert "| TIMEOUT after" in md and "| ERROR after" in md and "passed" in md and "NOT all sections ok" in md
