"""Faults a long study meets, each provoked for real (docs/reliability.md lists them all).

Real processes (``python -m harness.cli``), real signals, a real SQLite MLflow store or a real
``mlflow server``, tiny models on real LibriSpeech audio.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from harness.config import build_config
from harness.data.manifest import Utterance, write_manifest
from harness.experiments.grid import find_cell_runs, run_study
from harness.tracking.store import make_client
from harness.experiments.study import load_study
from harness.tracking.trackers import MlflowTracker
from harness.run.checkpoint import CheckpointError
from harness.run.trainer import Trainer, run_training

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HARNESS_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def _manifests(tmp: Path, libri: dict[str, list]) -> Path:
    """Two short real utterances to train on, one to evaluate and test on."""
    short = sorted(libri["dev-clean"], key=lambda u: u.duration)
    write_manifest(tmp / "train.jsonl", short[:2])
    write_manifest(tmp / "dev.jsonl", short[:1])
    return tmp


def base_config(d: Path, *, max_steps: int, checkpoint_every: int, **train: Any) -> dict[str, Any]:
    return {
        "data": {"train": f"{d}/train.jsonl", "dev": f"{d}/dev.jsonl", "test": {"mini": f"{d}/dev.jsonl"}},
        "encoder": {"name": "tiny:whisper"},
        "llm": {"name": "tiny:llama"},
        "adapter": {"hidden": 64},
        "train": {"device": "cpu", "max_steps": max_steps, "batch_size": 2, "warmup_steps": 0, "eval_every": 0,
                  "log_every": 1, "checkpoint_every": checkpoint_every, "eval_utterances": 1, **train},
        "decode": {"max_new_tokens": 4, "tokens_per_second": None},
    }


def write_study(tmp: Path, name: str, base: dict[str, Any], *, axes: dict | None = None,
                include: list | None = None) -> Path:
    doc: dict[str, Any] = {"name": name, "base": base}
    if axes:
        doc["axes"] = axes
    if include:
        doc["include"] = include
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def failing_at_step_three(tmp: Path, libri, *, max_steps: int = 5) -> tuple[dict, bytes]:
    """A base whose dev audio is a truncated FLAC (its header passes the default scan): the cell fails at
    its step-3 evaluation, one step after the checkpoint at 2. Returns (base, the real bytes to restore)."""
    d = _manifests(tmp, libri)
    dev = sorted(libri["dev-clean"], key=lambda u: u.duration)[0]
    real = Path(dev.audio).read_bytes()
    (tmp / "dev.flac").write_bytes(real[: len(real) // 2])
    write_manifest(tmp / "dev.jsonl", [type(dev)(dev.id, str(tmp / "dev.flac"), dev.text, dev.duration)])
    base = base_config(d, max_steps=max_steps, checkpoint_every=2, eval_every=3, lr=1e-3)
    base["data"]["test"] = {"mini": f"{d}/train.jsonl"}
    base["encoder"]["cache"] = False  # the cache would read the dev file before training
    return base, real


def cell_runs(uri: str, study_path: Path) -> dict[str, Any]:
    """cell hash -> its MLflow run (fresh from the store)."""
    st = load_study(study_path)
    client = make_client(uri)
    exp = client.get_experiment_by_name(st.experiment)
    return find_cell_runs(client, exp.experiment_id, st.name) if exp else {}


def steps_of(client, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def assert_no_duplicates(client, run_id: str) -> None:
    run = client.get_run(run_id)
    for key in run.data.metrics:
        counts = Counter(m.step for m in client.get_metric_history(run_id, key))
        dup = {s: n for s, n in counts.items() if n > 1}
        assert not dup, f"{key} logged twice at steps {dup}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Output:
    """Collects a subprocess's combined output from a thread (so the pipe never blocks)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        while chunk := proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
            self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, proc: subprocess.Popen, timeout: float) -> re.Match:
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(pattern, self.text)
            if m:
                return m
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} never appeared; output:\n{self.text[-3000:]}")


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end and not path.exists():
        assert proc.poll() is None, f"process ended early ({proc.returncode}) before {path} appeared"
        time.sleep(0.1)
    assert path.exists(), f"{path} never appeared"


# ---------------------------------------------------------------------- failures inside a grid


def test_nan_and_oom_cells_fail_and_the_grid_goes_on(tmp_path: Path, libri) -> None:
    """One cell diverges (lr 1e30 -> NaN loss at step 2), one cannot allocate its projector (a
    ~6 TB weight: the allocator's out-of-memory error), one is fine. `harness study run` marks the
    first two FAILED with the step / peak memory noted, finishes the third, and exits non-zero."""
    d = _manifests(tmp_path, libri)
    base = base_config(d, max_steps=3, checkpoint_every=3, lr=1e-3)
    path = write_study(tmp_path, "faults", base, include=[
        {"train.lr": 1e30, "train.clip": None},  # NaN
        {"adapter.hidden": 10**9},  # out of memory
        {"train.lr": 2e-3},  # fine, and last: the grid went on past both failures
    ])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(_cli("study", "run", str(path), "--tracking-uri", uri, "--runs-root", str(tmp_path / "runs"),
                               "--no-progress"), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr

    st = load_study(path)
    runs = cell_runs(uri, path)
    first, nan, oom, good = (runs[c.hash] for c in st.cells)  # the base config is a cell too
    assert first.info.status == "FINISHED"
    assert nan.info.status == "FAILED"
    assert nan.data.tags["harness.failed_step"] == "2"
    assert "TrainingDiverged" in nan.data.tags["harness.error"] and "at step 2" in nan.data.tags["harness.error"]
    assert oom.info.status == "FAILED"
    assert re.search(r"allocate|OutOfMemory|MemoryError", oom.data.tags["harness.error"]), oom.data.tags["harness.error"]
    assert re.match(r"rss \d+ MiB", oom.data.tags["harness.peak_memory"])
    assert good.info.status == "FINISHED"
    client = make_client(uri)
    assert steps_of(client, good.info.run_id) == [1, 2, 3]
    assert steps_of(client, nan.info.run_id) == [1]  # the failed run keeps what it logged before the NaN
    for run in (nan, oom):
        assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
        local = client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path / run.info.run_id))
        assert "Traceback" in Path(local).read_text()
    parent = client.get_run(nan.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED"
    # Running it again skips all three (two failed, one done) without training anything.
    again = subprocess.run(_cli("study", "run", str(path), "--tracking-uri", uri, "--runs-root", str(tmp_path / "runs"),
                                "--no-progress"), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 1
    assert again.stdout.count("skipped-failed") == 2 and again.stdout.count("skipped-done") == 2


# ------------------------------------------------------------------------------- interruption


def test_sigterm_checkpoints_marks_killed_and_resumes_into_the_same_run(tmp_path: Path, libri) -> None:
    d = _manifests(tmp_path, libri)
    # No periodic checkpoint before the end: a checkpoint on disk after SIGTERM was written by it.
    path = write_study(tmp_path, "sigterm", base_config(d, max_steps=40, checkpoint_every=1000, lr=1e-3))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = _cli("study", "run", str(path), "--tracking-uri", uri, "--runs-root", str(tmp_path / "runs"))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = Output(proc)
    out.wait_for(r"train:[^\r\n]*\|\s*([3-9]|[1-3]\d)/40", proc, timeout=240)  # a few steps into training
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0

    (cell,) = load_study(path).cells
    out_dir = tmp_path / "runs" / "sigterm" / cell.hash[:12]
    state = torch.load(out_dir / "checkpoint" / "state.pt", weights_only=True)["state"]
    assert 3 <= state["step"] < 40
    run = cell_runs(uri, path)[cell.hash]
    assert run.info.status == "KILLED"
    client = make_client(uri)
    # Everything up to the checkpoint is in MLflow; nothing beyond it.
    assert steps_of(client, run.info.run_id) == list(range(1, state["step"] + 1))

    again = subprocess.run([*cmd, "--no-progress"], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stderr
    rerun = cell_runs(uri, path)[cell.hash]
    assert rerun.info.run_id == run.info.run_id and rerun.info.status == "FINISHED"
    assert steps_of(client, run.info.run_id) == list(range(1, 41))
    assert_no_duplicates(client, run.info.run_id)


def test_sigkill_loses_only_uncheckpointed_steps_and_resumes_exactly(tmp_path: Path, libri) -> None:
    """SIGKILL (no handler runs) mid-way through the second cell: the first cell's run is untouched,
    the second has exactly its checkpointed steps in MLflow, and a worker that finds it abandoned
    resumes it into the same run, to the same weights as a run that never stopped."""
    d = _manifests(tmp_path, libri)
    # A tiny step takes a few hundredths of a second: enough steps that the kill lands mid-run.
    base = base_config(d, max_steps=2, checkpoint_every=25, lr=1e-3)  # cell 1: the base, 2 steps
    path = write_study(tmp_path, "sigkill", base, include=[{"train.max_steps": 200}])  # cell 2
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    st = load_study(path)
    first, second = st.cells
    runs_root = tmp_path / "runs"
    proc = subprocess.Popen(_cli("study", "run", str(path), "--tracking-uri", uri, "--runs-root", str(runs_root),
                                 "--no-progress"), cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_file(runs_root / "sigkill" / second.hash[:12] / "checkpoint" / "state.pt", proc, timeout=240)
        time.sleep(0.3)  # somewhere between checkpoints
    finally:
        proc.kill()
        proc.wait()

    client = make_client(uri)
    before = cell_runs(uri, path)
    done = before[first.hash]
    assert done.info.status == "FINISHED"
    done_history = [(m.step, m.value, m.timestamp) for m in client.get_metric_history(done.info.run_id, "train/loss")]
    killed = before[second.hash]
    assert killed.info.status == "RUNNING"  # nobody could mark it: only its heartbeat goes stale
    ckpt = runs_root / "sigkill" / second.hash[:12] / "checkpoint" / "state.pt"
    at = torch.load(ckpt, weights_only=True)["state"]["step"]
    assert at % 25 == 0 and 25 <= at < 200
    logged = steps_of(client, killed.info.run_id)
    # MLflow holds the checkpointed steps (fewer only if the kill hit the flush right after a
    # checkpoint; the checkpoint keeps those values and the resumed run sends them) and none after.
    assert logged == list(range(1, len(logged) + 1)) and at - 25 <= len(logged) <= at

    time.sleep(1.5)
    outcomes = run_study(st, uri=uri, runs_root=runs_root, progress=False, claim_timeout=1.0)
    assert [o.status for o in outcomes] == ["skipped-done", "done"]
    after = cell_runs(uri, path)
    assert after[second.hash].info.run_id == killed.info.run_id and after[second.hash].info.status == "FINISHED"
    assert steps_of(client, killed.info.run_id) == list(range(1, 201))
    assert_no_duplicates(client, killed.info.run_id)
    # The finished cell was not touched.
    assert after[first.hash].info.run_id == done.info.run_id
    assert after[first.hash].info.end_time == done.info.end_time
    assert [(m.step, m.value, m.timestamp) for m in client.get_metric_history(done.info.run_id, "train/loss")] == done_history
    # Same weights as a run of the same cell that never stopped.
    run_training(second.config, tmp_path / "reference", progress=False)
    ref = load_file(str(tmp_path / "reference" / "trainable.safetensors"))
    got = load_file(str(runs_root / "sigkill" / second.hash[:12] / "trainable.safetensors"))
    assert set(ref) == set(got)
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-6), k


# ------------------------------------------------------------------------------ tracking server


def start_mlflow_server(tmp: Path, port: int, log_name: str) -> subprocess.Popen:
    log = open(tmp / log_name, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/server.db",
         "--artifacts-destination", str(tmp / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "mlflow server exited"
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} never became healthy")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and its worker processes (its own process group, started by this test)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_server_restart_mid_run_loses_no_metrics(tmp_path: Path, libri, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server goes down right after the step-2 checkpoint and comes back seconds later; the
    step-4 checkpoint's flush retries until it is back, and every step arrives exactly once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the tracker's own retries do the work
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    d = _manifests(tmp_path, libri)
    cfg = build_config(base_config(d, max_steps=6, checkpoint_every=2, eval_every=2, lr=1e-3))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port, "server1.log")
    servers = [server]
    try:
        wait_healthy(url, server)
        client = make_client(url)
        exp = client.create_experiment("restart")
        run_id = client.create_run(exp).info.run_id
        times: dict[str, float] = {}

        def restart() -> None:
            time.sleep(2.0)
            servers.append(start_mlflow_server(tmp_path, port, "server2.log"))
            wait_healthy(url, servers[-1])
            times["up"] = time.time()

        restarter = threading.Thread(target=restart, daemon=True)

        def on_evaluate(step: int, dev: dict[str, float]) -> None:
            if step == 2:  # the step-2 checkpoint was just flushed
                stop_server(server)
                times["down"] = time.time()
                restarter.start()
            elif step == 4:  # the step-4 flush could only succeed against the restarted server
                assert "up" in times and times["up"] > times["down"]

        # More retries than the default 6 (~30 s): a loaded CI machine may take longer to restart the server.
        result = run_training(cfg, tmp_path / "run", tracker=MlflowTracker(client, run_id, retries=10), progress=False,
                              on_evaluate=on_evaluate)
        assert result.state.step == 6
        restarter.join(timeout=60)
        assert "up" in times
        client.set_terminated(run_id)
        assert steps_of(client, run_id) == [1, 2, 3, 4, 5, 6]
        assert steps_of(client, run_id, "dev/loss") == [2, 4, 6]  # 6: the final evaluation
        assert_no_duplicates(client, run_id)
        assert "test/mini/wer" in client.get_run(run_id).data.metrics
    finally:
        for s in servers:
            stop_server(s)


def test_unreachable_server_is_a_clear_error_before_any_training(tmp_path: Path, libri) -> None:
    d = _manifests(tmp_path, libri)
    path = write_study(tmp_path, "nowhere", base_config(d, max_steps=2, checkpoint_every=2))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run(_cli("study", "run", str(path), "--tracking-uri", url, "--runs-root", str(tmp_path / "runs")),
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"MLflow tracking server {url} is not reachable" in proc.stderr
    assert "start it or fix --tracking-uri" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
    with pytest.raises(ConnectionError, match="not reachable"):
        make_client(url)


# ------------------------------------------------------------------------------ bad audio, scan


def _bad_audio_corpus(tmp: Path, libri) -> tuple[list[Utterance], dict[str, str]]:
    """Three good real utterances, then a truncated FLAC (a real one cut to a third), a zero-length
    WAV, a missing file, and a 32-s file (real utterances joined): id -> what its reported reason
    must contain (the 32-s file is not bad, it is skipped by the data.max_duration policy)."""
    from harness.data.audio import load_audio, save_audio

    short = sorted(libri["dev-clean"], key=lambda u: u.duration)
    good = short[:3]
    real = Path(short[3].audio).read_bytes()
    (tmp / "truncated.flac").write_bytes(real[: len(real) // 3])
    sf.write(str(tmp / "empty.wav"), torch.zeros(0).numpy(), 16000)
    longest = sorted((u for s in libri.values() for u in s), key=lambda u: u.duration)[-2:]
    wave = torch.cat([load_audio(u.audio) for u in longest] * 2)[: 32 * 16000]
    save_audio(tmp / "long.wav", wave)
    bad = [
        Utterance("truncated", str(tmp / "truncated.flac"), "a truncated file", short[3].duration),
        Utterance("empty", str(tmp / "empty.wav"), "an empty file", 1.0),
        Utterance("missing", str(tmp / "missing.flac"), "a missing file", 2.0),
        Utterance("long", str(tmp / "long.wav"), "a thirty two second file", sf.info(str(tmp / "long.wav")).duration),
    ]
    return good + bad, {"truncated": "cannot decode", "empty": "empty.wav", "missing": "missing audio file"}


@pytest.mark.parametrize("scan", ["decode", "header"])
def test_scan_skips_and_reports_every_bad_file(tmp_path: Path, libri, scan: str) -> None:
    """scan=decode finds every bad file; scan=header (the fast default) finds missing, empty and
    unreadable-header files (a truncated FLAC needs decode: here it is left out of the header run,
    in a study it would fail its cell at the first read, named by AudioError)."""
    import json

    utts, reasons = _bad_audio_corpus(tmp_path, libri)
    if scan == "header":
        utts = [u for u in utts if u.id != "truncated"]
        reasons.pop("truncated")
    write_manifest(tmp_path / "train.jsonl", utts)
    write_manifest(tmp_path / "dev.jsonl", utts[:1])
    base = base_config(tmp_path, max_steps=1, checkpoint_every=1)
    base["data"]["scan"] = scan
    trainer = Trainer(build_config(base), tmp_path / "run", progress=False)
    trainer.setup()
    assert [u.id for u in trainer.data.train] == [u.id for u in utts[:3]]
    report = [json.loads(line) for line in (tmp_path / "run" / "bad_audio.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in report}
    assert set(by_id) == set(reasons)
    for uid, fragment in reasons.items():
        row = by_id[uid]
        assert row["split"] == "train" and Path(row["audio"]).name in row["reason"] and fragment in row["reason"], row
    trainer.cleanup()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    counts = {r["key"]: r["value"] for r in history if r["key"].startswith("data/")}
    assert counts == {"data/train/too_long": 1.0, "data/train/bad_audio": float(len(reasons))}


def test_scan_stop_names_the_bad_files(tmp_path: Path, libri) -> None:
    utts, _ = _bad_audio_corpus(tmp_path, libri)
    write_manifest(tmp_path / "train.jsonl", utts)
    write_manifest(tmp_path / "dev.jsonl", utts[:1])
    base = base_config(tmp_path, max_steps=1, checkpoint_every=1)
    base["data"].update(scan="decode", on_bad_audio="stop")
    with pytest.raises(ValueError, match=r"train: 3 bad audio files \(data.on_bad_audio=stop\)") as e:
        Trainer(build_config(base), tmp_path / "run", progress=False).setup()
    assert str(tmp_path / "truncated.flac") in str(e.value) and str(tmp_path / "missing.flac") in str(e.value)


# ------------------------------------------------------------------------------------ bad config


def test_unreachable_hub_model_is_a_one_line_error(tmp_path: Path, libri) -> None:
    d = _manifests(tmp_path, libri)
    cfg = base_config(d, max_steps=1, checkpoint_every=1)
    cfg["encoder"]["name"] = "hf:no-such-org/no-such-whisper"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    args = [str(tmp_path / "run.yaml")]
    proc = subprocess.run(_cli("train", *args, "--out", str(tmp_path / "run"), "--no-progress"), cwd=tmp_path,
                          env={**_env(tmp_path), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Error: cannot load Hugging Face model 'no-such-org/no-such-whisper'" in proc.stderr
    assert "offline" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoint").exists()


# ---------------------------------------------------------------------------- checkpoints, security


def test_a_crash_while_writing_a_checkpoint_leaves_a_usable_one(tmp_path: Path, libri) -> None:
    """Checkpoints are written to checkpoint.tmp and swapped in by renames. A crash leaves either a
    partial checkpoint.tmp (ignored) or, mid-swap, only checkpoint.old (used): resume works in both."""
    import shutil

    d = _manifests(tmp_path, libri)
    cfg = build_config(base_config(d, max_steps=4, checkpoint_every=2, lr=1e-3))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.setup()
    trainer._order_cache = {}  # what train() sets up: two steps by hand, then a checkpoint
    for _ in range(2):
        trainer._train_step()
        trainer.state.step += 1
    trainer.save_checkpoint()
    ckpt = tmp_path / "run" / "checkpoint"
    assert not (tmp_path / "run" / "checkpoint.tmp").exists() and not (tmp_path / "run" / "checkpoint.old").exists()

    # 1. The process died while writing the next checkpoint: a half-written checkpoint.tmp.
    (tmp_path / "run" / "checkpoint.tmp").mkdir()
    (tmp_path / "run" / "checkpoint.tmp" / "trainable.safetensors").write_bytes(b"\0" * 10)
    again = Trainer(cfg, tmp_path / "run", progress=False)
    again.setup()
    assert again.state.step == 2
    # 2. It died between the two renames: only checkpoint.old holds the last checkpoint.
    shutil.rmtree(tmp_path / "run" / "checkpoint.tmp")
    os.replace(ckpt, tmp_path / "run" / "checkpoint.old")
    third = Trainer(cfg, tmp_path / "run", progress=False)
    third.setup()
    assert third.state.step == 2
    result = third.train()
    assert result.state.step == 4 and ckpt.is_dir() and not (tmp_path / "run" / "checkpoint.old").exists()


def test_a_checkpoint_carrying_code_is_refused(tmp_path: Path, libri) -> None:
    """state.pt is read with torch.load(weights_only=True): a pickle that would run code on load
    (here: print to a file) is refused, and the code does not run."""
    import pickle

    d = _manifests(tmp_path, libri)
    cfg = build_config(base_config(d, max_steps=2, checkpoint_every=2, lr=1e-3))
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.setup()
    trainer.save_checkpoint()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    torch.save({"state": Evil()}, tmp_path / "run" / "checkpoint" / "state.pt")
    with pytest.raises(CheckpointError, match="state.pt is unreadable .*Weights only load failed") as e:
        Trainer(cfg, tmp_path / "run", progress=False).setup()
    assert isinstance(e.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    from harness.config import ConfigError, load_config

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"train: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n")
    with pytest.raises(ConfigError):
        load_config(path, [])
    assert not marker.exists()


def test_no_shell_strings_and_loopback_servers() -> None:
    """Static guard over the project's code: commands are argument lists (no shell=True, os.system,
    os.popen), checkpoints load with weights_only=True, servers default to 127.0.0.1."""
    sources = [p for folder in ("harness", "analysis") for p in (ROOT / folder).rglob("*.py")]
    assert sources
    for p in sources:
        text = p.read_text()
        for bad in ("shell=True", "os.system(", "os.popen(", "yaml.load(text)", "yaml.unsafe_load", "pickle.load("):
            assert bad not in text, f"{p.relative_to(ROOT)}: {bad}"
        for call in re.findall(r"torch\.load\([^\n]*", text):
            assert "weights_only=True" in call, f"{p.relative_to(ROOT)}: {call}"
        for host in re.findall(r'"--host", default="([^"]+)"', text):
            assert host == "127.0.0.1", f"{p.relative_to(ROOT)} binds {host} by default"
    services = (ROOT / ".ci" / "services").read_text()
    assert "--host 127.0.0.1" in services and "0.0.0.0" not in services


def test_unknown_model_names_list_valid_names_and_the_closest(tmp_path: Path) -> None:
    from harness.models import check_reference
    from harness.registry import RegistryError

    with pytest.raises(RegistryError, match=r"unknown pack 'whisper-tiny' \(did you mean 'whisper-tiny.en'\?\)\. "
                                            r"Valid pack names: .*whisper-base"):
        check_reference("pack:whisper-tiny", kind="encoder")
    proc = subprocess.run(_cli("train", "encoder.name=tiny:whispr", "llm.name=tiny:lama", "--out", str(tmp_path / "run")),
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "unknown tiny encoder 'whispr' (did you mean 'whisper'?). Valid tiny encoder names:" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()  # refused before anything ran


def test_non_ascii_transcripts_round_trip(tmp_path: Path, libri) -> None:
    from harness.data.manifest import read_manifest

    u = sorted(libri["dev-clean"], key=lambda u: u.duration)[0]
    texts = ["NAÏVE CAFÉ DÉJÀ VU", "ÜBER STRAßE", "日本語の文", "EMOJI 🙂 AND TAB\tINSIDE"]
    utts = [Utterance(f"u{i}", u.audio, t, u.duration) for i, t in enumerate(texts)]
    write_manifest(tmp_path / "m.jsonl", utts)
    assert [x.text for x in read_manifest(tmp_path / "m.jsonl")] == texts
