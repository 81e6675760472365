"""The SLURM launcher against a real single-node SLURM cluster (started by `bash .ci/slurm`): a tiny grid as
one job array, every cell once and a second submission skipping them all; a task signalled by SLURM
checkpoints, is requeued and resumes into the same MLflow run with no step logged twice; a search with two
SLURM workers completes exactly n_trials trials. Skipped, saying why, only where `sbatch` is absent.

The commands are those of README "Scaling out", section 5.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError
from harness.experiments.slurm import SlurmOptions, parse_extra, parse_time
from harness.experiments.study import load_study
from harness.tracking import tags
from harness.tracking.store import make_client

from tests.experiments.test_reliability import (_cli, _env, _manifests, assert_no_duplicates, base_config, cell_runs,
                                                steps_of, write_study)

needs_slurm = pytest.mark.skipif(shutil.which("sbatch") is None,
                                 reason="no SLURM here (sbatch not found): start one with `bash .ci/slurm`")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def _run(tmp: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(_cli(*args), cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=timeout)
    return done


def _slurm_args(tmp: Path) -> list[str]:
    return ["--launcher", "slurm", "--cpus-per-cell", "1", "--time", "10", "--slurm-logs", str(tmp / "slurm-logs")]


def test_time_and_options_parse_as_slurm_writes_them() -> None:
    assert [parse_time(t) for t in ("30", "1:30", "2:00:00", "1-0", "1-2:03", "0:0:59")] == [30, 2, 120, 1440, 1563, 1]
    for bad in ("", "abc", "0", "1:2:3:4", "-5"):
        with pytest.raises(ConfigError, match="--time"):
            parse_time(bad)
    assert parse_extra(["account=speech", "exclusive", "mail-type=END"]) == {
        "account": "speech", "exclusive": "", "mail_type": "END"}
    with pytest.raises(ConfigError, match="--slurm"):
        parse_extra(["=x"])
    with pytest.raises(ConfigError, match="--mem"):
        SlurmOptions(mem="lots")
    with pytest.raises(ConfigError, match="--procs-per-cell 4 with --gpus-per-cell 2"):
        SlurmOptions(gpus_per_cell=2, procs_per_cell=4)
    with pytest.raises(ConfigError, match="--procs-per-cell: expected >= 1"):
        SlurmOptions(procs_per_cell=0)
    assert [SlurmOptions(gpus_per_cell=g, procs_per_cell=p).ranks for g, p in ((0, None), (1, None), (4, None), (0, 2))] \
        == [1, 1, 4, 2]
    lines = SlurmOptions(partition="gpu", gpus_per_cell=1, mem="16G", max_parallel=2,
                         extra={"account": "speech"}).describe("grid", 5)
    assert lines == ["--job-name=grid", "--array=0-4%2", "--time=1440", "--signal=USR2@90", "--partition=gpu",
                     "--gpus-per-node=1", "--account=speech", "--mem=16G"]


def test_bad_slurm_options_are_one_line_errors(tmp_path: Path, libri) -> None:
    d = _manifests(tmp_path, libri)
    path = write_study(tmp_path, "bad", base_config(d, max_steps=2, checkpoint_every=2))
    done = _run(tmp_path, "study", "run", str(path), "--launcher", "slurm", "--time", "soon", "--dry-run")
    assert done.returncode != 0
    assert "--time: expected a SLURM time" in done.stderr and "Traceback" not in done.stderr


def test_dry_run_prints_the_array_without_submitting(tmp_path: Path, libri) -> None:
    d = _manifests(tmp_path, libri)
    path = write_study(tmp_path, "dry", base_config(d, max_steps=2, checkpoint_every=2), axes={"adapter.k": [2, 3]})
    done = _run(tmp_path, "study", "run", str(path), *_slurm_args(tmp_path), "--mem", "2G", "--dry-run",
                "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert done.returncode == 0, done.stderr
    assert "2 to submit" in done.stdout and "task 1:" in done.stdout
    assert "sbatch --job-name=dry --array=0-1%2 --time=10 --signal=USR2@90 --cpus-per-task=1 --mem=2G" in done.stdout
    assert not (tmp_path / "slurm-logs").exists()  # nothing submitted


@needs_slurm
def test_a_grid_runs_as_one_array_each_cell_once_and_a_second_submission_skips_all(tmp_path: Path, libri) -> None:
    d = _manifests(tmp_path, libri)
    path = write_study(tmp_path, "sgrid", base_config(d, max_steps=3, checkpoint_every=3, lr=1e-3),
                       axes={"adapter.k": [2, 3, 4]})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["--tracking-uri", uri, "--runs-root", str(tmp_path / "runs"), *_slurm_args(tmp_path)]
    done = _run(tmp_path, "study", "run", str(path), *common, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 3 tasks" in done.stdout
    st = load_study(path)
    runs = cell_runs(uri, path)
    assert set(runs) == {c.hash for c in st.cells}
    client = make_client(uri)
    jobs = set()
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert steps_of(client, run.info.run_id) == [1, 2, 3]
        assert "test/mini/wer" in run.data.metrics
        assert_no_duplicates(client, run.info.run_id)
        jobs.add(run.data.tags[tags.SLURM_JOB])
        assert Path(run.data.tags[tags.SLURM_STDOUT]).exists()
    assert len(jobs) == 3 and len({j.split("_")[0] for j in jobs}) == 1  # one array, one task per cell
    for c in st.cells:  # logs named by study and cell
        assert (tmp_path / "slurm-logs" / "sgrid" / "cells" / f"{c.hash}.out").resolve().exists()

    again = _run(tmp_path, "study", "run", str(path), *common, "--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 to submit" in again.stdout and "nothing to submit" in again.stdout
    status = _run(tmp_path, "study", "status", str(path), "--tracking-uri", uri, "--slurm-logs",
                  str(tmp_path / "slurm-logs"))
    assert status.returncode == 0, status.stderr
    assert "3 cells: 3 done" in status.stdout


def _job_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


@needs_slurm
# TERM is what SLURM sends at preemption, USR2 what --signal sends before the time limit; both reach the one
# stop handler, so USR2 is tried on the two-process cell only (one variant less: 45 s of the suite).
@pytest.mark.parametrize("sig,procs", [("TERM", 1), ("USR2", 2)])
def test_a_signalled_task_checkpoints_is_requeued_and_resumes_into_the_same_run(tmp_path: Path, libri, sig: str,
                                                                                procs: int) -> None:
    """procs=2: the cell trains on two processes (data parallel); SLURM's signal reaches the task and its
    ranks, which stop at the same step; rank 0 checkpoints, the task is requeued and resumes."""
    d = _manifests(tmp_path, libri)
    # Metrics reach MLflow at checkpoints: every 10 steps, so the test sees the run train.
    steps = 300 if procs == 1 else 120  # (two ranks on the test node's 2 CPUs: fewer steps, the same checks)
    path = write_study(tmp_path, f"spre{sig.lower()}{procs}", base_config(d, max_steps=steps, checkpoint_every=10, lr=1e-3))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["--tracking-uri", uri, "--runs-root", str(tmp_path / "runs"), *_slurm_args(tmp_path),
              "--procs-per-cell", str(procs)]
    done = _run(tmp_path, "study", "run", str(path), *common)
    assert done.returncode == 0, done.stdout + done.stderr
    job = re.search(r"submitted 1 tasks: (\d+)", done.stdout).group(1)
    client = make_client(uri)
    (cell,) = load_study(path).cells
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until a few steps are logged
        run = cell_runs(uri, path).get(cell.hash)
        if run is not None and len(steps_of(client, run.info.run_id)) >= 10:
            break
        time.sleep(1)
    else:
        pytest.fail("the task never trained: " + _logs(tmp_path))
    run_id = run.info.run_id
    subprocess.run(["scancel", f"--signal={sig}", job], check=True)
    deadline = time.time() + 120
    while _job_state(job) != "PENDING" and time.time() < deadline:
        time.sleep(0.5)
    assert _job_state(job) == "PENDING", _logs(tmp_path)  # requeued
    stopped = cell_runs(uri, path)[cell.hash]
    assert stopped.info.status == "KILLED"
    at_stop = steps_of(client, run_id)
    assert 10 <= len(at_stop) < steps and at_stop == list(range(1, len(at_stop) + 1))
    # SLURM holds a requeued job back for about two minutes; let it start now.
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    deadline = time.time() + 400
    while _job_state(job) and time.time() < deadline:
        time.sleep(1)
    final = cell_runs(uri, path)[cell.hash]
    assert final.info.run_id == run_id and final.info.status == "FINISHED", _logs(tmp_path)
    assert steps_of(client, run_id) == list(range(1, steps + 1))
    assert_no_duplicates(client, run_id)
    assert final.data.metrics.get("dist/world_size", 1.0) == procs
    log = (tmp_path / "slurm-logs" / path.stem / "cells" / f"{cell.hash}.err").read_text()
    assert "resuming" in log and "requeued" in log


def _logs(tmp: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((tmp / "slurm-logs").rglob("*_log.*")))


@needs_slurm
def test_a_search_with_two_slurm_workers_completes_exactly_n_trials(tmp_path: Path, libri) -> None:
    d = _manifests(tmp_path, libri)
    doc = {"name": "ssearch", "base": base_config(d, max_steps=2, checkpoint_every=2, eval_every=2),
           "search": {"objective": "dev/loss", "n_trials": 3, "sampler": "random", "seed": 0, "pruner": "none",
                      "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}}
    path = tmp_path / "ssearch.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = _run(tmp_path, "study", "search", str(path), "--workers", "2", "--tracking-uri", uri, "--runs-root",
                str(tmp_path / "runs"), "--storage", str(tmp_path / "journal.log"), *_slurm_args(tmp_path), "--wait")
    assert done.returncode == 0, done.stdout + done.stderr + _logs(tmp_path)
    assert "3 trials counted" in done.stdout
    import optuna

    from harness.experiments.search import open_storage

    study = optuna.load_study(study_name="ssearch", storage=open_storage(str(tmp_path / "journal.log")))
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 3
    client = make_client(uri)
    exp = client.get_experiment_by_name("ssearch")
    trials = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tags.KIND}` = 'trial'")
    assert len(trials) == 3 and all(r.info.status == "FINISHED" for r in trials)
