"""Scale-out services for real: an `mlflow server` backed by PostgreSQL (started by .ci/services)
shared by three worker processes, and an Optuna storage on the same PostgreSQL.

Skipped, saying why, when the services are not running: start them with `bash .ci/services`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from harness.tracking.store import make_client
from harness.tracking.tags import CELL_HASH as TAG_HASH, KIND as TAG_KIND, STUDY as TAG_STUDY
from harness.experiments.study import load_study

from tests.experiments.test_reliability import _cli, _env, _manifests, base_config, write_study

ROOT = Path(__file__).resolve().parents[2]
SERVICES_ENV = ROOT / ".ci" / "services.env"


def _services() -> dict[str, str]:
    """The URLs .ci/services wrote (the environment wins), or a skip naming what is missing."""
    values: dict[str, str] = {}
    if SERVICES_ENV.exists():
        for line in SERVICES_ENV.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                values[key.strip()] = value.strip()
    for key in ("HARNESS_TEST_PG_URL", "HARNESS_TEST_OPTUNA_URL", "HARNESS_TEST_MLFLOW_URL"):
        if os.environ.get(key):
            values[key] = os.environ[key]
    if "HARNESS_TEST_MLFLOW_URL" not in values:
        pytest.skip("PostgreSQL/mlflow server services not configured: run `bash .ci/services` "
                    "(writes .ci/services.env) or set HARNESS_TEST_MLFLOW_URL")
    url = values["HARNESS_TEST_MLFLOW_URL"]
    try:
        urllib.request.urlopen(url + "/health", timeout=5).read()
    except OSError as e:
        pytest.skip(f"mlflow server {url} from .ci/services.env is not running ({e}): run `bash .ci/services`")
    return values


@pytest.fixture(scope="module")
def services() -> dict[str, str]:
    return _services()


def _history(url: str, run_id: str, key: str) -> list[dict]:
    """A metric's history straight from the server's REST API."""
    query = urllib.parse.urlencode({"run_id": run_id, "metric_key": key, "max_results": 25000})
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/metrics/get-history?{query}", timeout=30) as r:
        return json.loads(r.read()).get("metrics", [])


def test_three_workers_on_a_postgres_backed_server(tmp_path: Path, libri, services) -> None:
    url = services["HARNESS_TEST_MLFLOW_URL"]
    d = _manifests(tmp_path, libri)
    name = f"pg_{uuid.uuid4().hex[:8]}"  # the server outlives the test: a new study each time
    path = write_study(tmp_path, name, base_config(d, max_steps=4, checkpoint_every=2, lr=1e-3),
                       axes={"adapter.k": [2, 3, 4]})
    cmd = _cli("study", "run", str(path), "--tracking-uri", url, "--runs-root", str(tmp_path / "runs"), "--no-progress")
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n\n".join(outs)

    st = load_study(path)
    client = make_client(url)
    exp = client.get_experiment_by_name(st.experiment).experiment_id
    cells = client.search_runs([exp], filter_string=f"tags.`{TAG_KIND}` = 'cell' and tags.`{TAG_STUDY}` = '{name}'")
    assert Counter(r.data.tags[TAG_HASH] for r in cells) == Counter({c.hash: 1 for c in st.cells})
    assert {r.info.status for r in cells} == {"FINISHED"}
    claims = client.search_runs([exp], filter_string=f"tags.`{TAG_KIND}` = 'claim' and tags.`{TAG_STUDY}` = '{name}'")
    assert claims == []
    started = Counter(m.group(1) for out in outs for m in re.finditer(r"\(([0-9a-f]{12})\): starting", out))
    assert started == Counter({c.hash[:12]: 1 for c in st.cells})
    for r in cells:
        losses = _history(url, r.info.run_id, "train/loss")
        assert sorted(int(m["step"]) for m in losses) == [1, 2, 3, 4], r.info.run_name
        assert _history(url, r.info.run_id, "test/mini/wer")
        # Artifacts went through the server to its shared artifact location.
        assert {"config.yaml", "trainable.safetensors"} <= {a.path for a in client.list_artifacts(r.info.run_id)}


def test_optuna_search_on_the_same_postgres(tmp_path: Path, libri, services) -> None:
    if "HARNESS_TEST_OPTUNA_URL" not in services:
        pytest.skip("HARNESS_TEST_OPTUNA_URL not set (.ci/services writes it)")
    pytest.importorskip("psycopg2")
    import textwrap

    from optuna.trial import TrialState

    from harness.experiments.search import ATTR_RUN_ID, run_search

    url, storage = services["HARNESS_TEST_MLFLOW_URL"], services["HARNESS_TEST_OPTUNA_URL"]
    d = _manifests(tmp_path, libri)
    name = f"pgsearch_{uuid.uuid4().hex[:8]}"
    base = base_config(d, max_steps=4, checkpoint_every=100, lr=1e-3, eval_every=2)
    import yaml

    doc = {"name": name, "base": base, "search": yaml.safe_load(textwrap.dedent("""\
        objective: dev/loss
        n_trials: 3
        seed: 0
        pruner: none
        sampler: {type: random}
        params:
          train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        """))}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    study = run_search(load_study(path), workers=2, storage=storage, tracking_uri=url, runs_root=tmp_path / "runs")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    client = make_client(url)
    for t in trials:
        run = client.get_run(t.user_attrs[ATTR_RUN_ID])
        assert run.info.status == "FINISHED"
        assert sorted(int(m["step"]) for m in _history(url, run.info.run_id, "train/loss")) == [1, 2, 3, 4]
