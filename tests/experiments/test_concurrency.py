"""Several workers on one study, for real: `harness study run` processes sharing one SQLite MLflow
store never train a cell twice, a dead worker's cell is taken over after the claim timeout, and
processes filling the feature cache at once leave every file whole."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.data.manifest import read_manifest, write_manifest
from harness.experiments.grid import cell_status
from harness.tracking.liveness import claim_cell
from harness.tracking.store import make_client
from harness.tracking.tags import CELL_HASH as TAG_HASH, KIND as TAG_KIND, STUDY as TAG_STUDY
from harness.experiments.study import load_study

from tests.experiments.test_reliability import (_cli, _env, _manifests, assert_no_duplicates, base_config, cell_runs, steps_of,
                              wait_for_file, write_study)


def _active(client, exp_id: str, kind: str, study: str) -> list:
    return client.search_runs([exp_id], filter_string=f"tags.`{TAG_KIND}` = '{kind}' and tags.`{TAG_STUDY}` = '{study}'",
                              max_results=1000)


def test_three_workers_train_every_cell_exactly_once(tmp_path: Path, libri) -> None:
    d = _manifests(tmp_path, libri)
    path = write_study(tmp_path, "crowd", base_config(d, max_steps=4, checkpoint_every=2, lr=1e-3),
                       axes={"adapter.k": [2, 3, 4, 5]})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # A short claim timeout with live workers: their heartbeats must keep every cell theirs.
    cmd = _cli("study", "run", str(path), "--tracking-uri", uri, "--runs-root", str(tmp_path / "runs"), "--no-progress",
               "--claim-timeout", "6")
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(3)]  # noqa: SIM115
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT) for log in logs]
    codes = [p.wait(timeout=400) for p in procs]
    texts = [(tmp_path / f"worker{i}.log").read_text() for i in range(3)]
    for log in logs:
        log.close()
    assert codes == [0, 0, 0], "\n\n".join(texts)

    st = load_study(path)
    client = make_client(uri)
    exp = client.get_experiment_by_name(st.experiment).experiment_id
    cells = _active(client, exp, "cell", st.name)
    per_hash = Counter(r.data.tags[TAG_HASH] for r in cells)
    assert per_hash == Counter({c.hash: 1 for c in st.cells}), per_hash  # one run per cell, no strays
    assert all(r.info.status == "FINISHED" for r in cells)
    assert _active(client, exp, "claim", st.name) == []  # every claim was released
    parents = _active(client, exp, "study", st.name)
    assert len(parents) == 1  # the workers agreed on one parent run
    # The old runner left it RUNNING: a worker that had passed a cell running elsewhere never closed it.
    assert parents[0].info.status == "FINISHED"
    for r in cells:
        # Trained once: each step logged once, nothing resumed.
        history = client.get_metric_history(r.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4], r.info.run_name
        assert_no_duplicates(client, r.info.run_id)
    # Each cell was started by exactly one worker, and never resumed.
    started = Counter(m.group(1) for t in texts for m in re.finditer(r"\(([0-9a-f]{12})\): starting", t))
    assert started == Counter({c.hash[:12]: 1 for c in st.cells}), started
    assert not any("resuming" in t for t in texts)
    assert sum(1 for t in texts if "starting" in t) >= 2  # the work was actually shared


def test_claims_elect_one_winner_and_ignore_dead_claims(tmp_path: Path) -> None:
    """claim_cell against a real SQLite store: a live earlier claim wins over ours; a claim left by a
    worker that died an hour ago does not block anyone; our own claim wins when alone."""
    client = make_client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("claims", artifact_location=(tmp_path / "art").as_uri())
    tags = {TAG_KIND: "claim", TAG_STUDY: "s", TAG_HASH: "h" * 64, "harness.generation": "new"}
    now_ms = int(time.time() * 1000)
    dead = client.create_run(exp, start_time=now_ms - 3_600_000, tags=tags).info.run_id
    assert claim_cell(client, exp, "s", "h" * 64, "new", claim_timeout=300) not in (None, dead)

    live = client.create_run(exp, start_time=now_ms - 1_000, tags={**tags, TAG_HASH: "g" * 64}).info.run_id
    assert claim_cell(client, exp, "s", "g" * 64, "new", claim_timeout=300) is None  # the live one was first
    assert claim_cell(client, exp, "s", "g" * 64, "other-generation", claim_timeout=300) is not None
    assert client.get_run(live).info.lifecycle_stage == "active"


def test_a_contender_stamped_earlier_but_committed_later_still_wins(tmp_path: Path) -> None:
    """The race CI met with three workers on a PostgreSQL-backed server: a run's start time is stamped
    by its client before the store commits it. A contender stamped before our claim whose row lands
    while we settle must win, and we must lose (two winners would train one cell twice, or adopt a
    parent run its owner then deletes)."""
    import threading

    from harness.tracking import liveness as runner

    client = make_client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("late", artifact_location=(tmp_path / "art").as_uri())
    tags = {TAG_KIND: "claim", TAG_STUDY: "s", TAG_HASH: "h" * 64, "harness.generation": "new"}
    stamped = int(time.time() * 1000) - 50  # before ours, as a slower client would have stamped it
    late = threading.Timer(runner.CLAIM_SETTLE / 3, lambda: client.create_run(exp, start_time=stamped, tags=tags))
    late.start()
    try:
        assert claim_cell(client, exp, "s", "h" * 64, "new", claim_timeout=300) is None
    finally:
        late.join()
    live = client.search_runs([exp], filter_string=f"tags.`{TAG_HASH}` = '{'h' * 64}'")
    assert [r.info.start_time for r in live] == [stamped]  # our claim was deleted, the earlier one stands


def test_a_dead_workers_cell_is_resumed_after_the_claim_timeout(tmp_path: Path, libri) -> None:
    d = _manifests(tmp_path, libri)
    path = write_study(tmp_path, "orphan", base_config(d, max_steps=300, checkpoint_every=20, lr=1e-3))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (cell,) = load_study(path).cells
    cmd = _cli("study", "run", str(path), "--tracking-uri", uri, "--runs-root", str(tmp_path / "runs"), "--no-progress",
               "--claim-timeout", "4")
    worker = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_file(tmp_path / "runs" / "orphan" / cell.hash[:12] / "checkpoint" / "state.pt", worker, timeout=240)
    finally:
        worker.kill()  # SIGKILL: no handler, the run stays RUNNING with its last heartbeat
        worker.wait()
    run = cell_runs(uri, path)[cell.hash]
    assert run.info.status == "RUNNING"
    assert cell_status(run, claim_timeout=4) == "running"  # a fresh heartbeat: not taken over yet
    time.sleep(4.5)
    assert cell_status(cell_runs(uri, path)[cell.hash], claim_timeout=4) == "interrupted"

    second = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"({cell.hash[:12]}): resuming" in second.stderr
    after = cell_runs(uri, path)[cell.hash]
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    client = make_client(uri)
    assert steps_of(client, run.info.run_id) == list(range(1, 301))
    assert_no_duplicates(client, run.info.run_id)


FILL = """
import sys
from harness.config import load_config
from harness.data.manifest import read_manifest
from harness.run.features import FeatureCache
from harness.models import build_encoder

cfg = load_config(None, ["encoder.name=tiny:whisper", "llm.name=tiny:llama", "adapter.hidden=64"])
cache = FeatureCache(build_encoder(cfg), reference=cfg.encoder.name, root=sys.argv[1])
print(cache.fill(read_manifest(sys.argv[2]), batch_seconds=1.0, progress=False))
"""


def test_two_processes_fill_the_feature_cache_at_once(tmp_path: Path, utts_by_duration) -> None:
    utts = utts_by_duration[:8]
    write_manifest(tmp_path / "utts.jsonl", utts)
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    env = {**_env(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", FILL, str(shared), str(tmp_path / "utts.jsonl")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    computed = [int(out.strip().splitlines()[-1]) for out, _ in results]
    assert all(0 <= n <= len(utts) for n in computed) and sum(computed) >= len(utts)
    single = subprocess.run([sys.executable, "-c", FILL, str(alone), str(tmp_path / "utts.jsonl")], env=env,
                            capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-2000:]

    def files(root: Path, pattern: str) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob(pattern) if p.is_file())

    alone_files = files(alone, "*.safetensors")
    assert len(alone_files) == len(utts)
    assert files(shared, "*.safetensors") == alone_files  # nothing missing
    assert files(shared, "*") == files(alone, "*")  # no temporary file left behind
    for shard in (shared / "features" / "audio-digests").glob("*.json"):  # the digest index: whole, if racy
        assert isinstance(json.loads(shard.read_text()), dict)
    for rel in alone_files:
        a, b = load_file(str(shared / rel))["frames"], load_file(str(alone / rel))["frames"]
        assert a.dtype == torch.float16 and torch.equal(a, b), rel
    assert read_manifest(tmp_path / "utts.jsonl")  # the manifest is untouched


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
