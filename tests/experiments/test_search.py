"""Optuna searches: the study file's search section, the objective, pruning, parallel workers, resume.

Everything is real: tiny models trained on real LibriSpeech utterances, Optuna SQLite and journal
storages, an MLflow SQLite store, worker processes, SIGKILL. Trials are a few optimizer steps long.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from optuna.trial import FixedTrial, TrialState

from harness.config import ConfigError, config_hash
from harness.experiments.search import (
    ATTR_RETRY_OF,
    ATTR_RUN_ID,
    EmergenceAwarePruner,
    load_search,
    make_objective,
    open_storage,
    resolve_storage,
    run_search,
    suggest_config,
)
from harness.cli.search import dashboard_command, search_command
from harness.experiments.study import load_study

REPO = Path(__file__).resolve().parents[2]
LIBRISPEECH = REPO.parent / "shared" / "data" / "librispeech-mini"

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, Path]:
    """Short real utterances (< 5 s): 6 to train on, 2 to evaluate on."""
    if not (LIBRISPEECH / "LibriSpeech").is_dir():
        pytest.skip(f"real LibriSpeech sample not found at {LIBRISPEECH}")
    from harness.data.librispeech import read_librispeech
    from harness.data.manifest import write_manifest

    out = tmp_path_factory.mktemp("manifests")
    write_manifest(out / "train.jsonl", [u for u in read_librispeech(LIBRISPEECH, "dev-clean") if u.duration < 5])
    write_manifest(out / "dev.jsonl", [u for u in read_librispeech(LIBRISPEECH, "test-clean") if u.duration < 5][:2])
    return {"train": out / "train.jsonl", "dev": out / "dev.jsonl"}


def study_file(tmp_path: Path, manifests: dict[str, Path], search: str, *, name: str = "tiny_search",
               max_steps: int = 6) -> Path:
    """A study of tiny models (a few steps, evaluation every 2) with the given ``search:`` section."""
    text = textwrap.dedent(f"""\
        name: {name}
        base:
          data: {{train: {manifests['train']}, dev: {manifests['dev']}, test: {{dev: {manifests['dev']}}}}}
          encoder: {{name: "tiny:whisper"}}
          llm: {{name: "tiny:llama"}}
          adapter: {{hidden: 64}}
          train: {{max_steps: {max_steps}, warmup_steps: 0, eval_every: 2, eval_utterances: 2, batch_size: 2,
                  checkpoint_every: 100, device: cpu}}
          decode: {{max_new_tokens: 4}}
        search:
        """) + textwrap.indent(textwrap.dedent(search), "  ")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


LR_SEARCH = """\
    objective: dev/loss
    n_trials: 2
    seed: 0
    pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}
    params:
      train.lr: {type: float, low: 1.0e-7, high: 1.0e-1, log: true}
    enqueue:
      - {train.lr: 1.0e-2}
      - {train.lr: 1.0e-7}
"""


def line_of(path: Path, snippet: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if snippet in line)


# ------------------------------------------------------------------------------------- the search section


@pytest.mark.parametrize(
    ("search", "bad_line", "message"),
    [
        ("n_trial: 3\nparams: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\n",
         "n_trial", "unknown key search.n_trial (did you mean 'n_trials'?)"),
        ("params:\n  train.lr: {type: uniform, low: 1.0e-4, high: 1.0e-2}\n",
         "train.lr", "'type' one of float, int, categorical, got 'uniform'"),
        ("params:\n  train.lr: {type: float, low: 1.0e-2, high: 1.0e-4}\n",
         "train.lr", "invalid float distribution"),
        ("params:\n  train.lr: {type: float, low: 0.0, high: 1.0e-2, log: true}\n",
         "train.lr", "invalid float distribution"),
        ("params:\n  train.lrr: {type: float, low: 1.0e-4, high: 1.0e-2}\n",
         "train.lrr", "unknown key 'train.lrr' (did you mean 'lr'?)"),
        ("params:\n  adapter.hidden: {type: float, low: 64.0, high: 128.0}\n",
         "adapter.hidden", "adapter.hidden: expected int, got 64.0"),
        ("params:\n  adapter.k:\n    type: categorical\n    choices: [2, 0]\n",
         "choices", "adapter.k: expected >= 1, got 0"),
        ("params:\n  adapter.hidden: {type: int, low: 64, high: 128, step: 8, seed: 1}\n",
         "adapter.hidden", "unknown key search.params.adapter.hidden.seed. Valid keys: type, low, high, step, log"),
        ("objective: test/wer\nparams: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\n",
         "objective", "METRIC one of dev/wer, dev/loss, dev/acc, got 'test/wer'"),
        ("sampler: cmaes\nparams: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\n",
         "sampler", "expected one of grid, random, tpe"),
        ("pruner: {type: median, warmup: 3}\nparams: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\n",
         "pruner", "unknown key search.pruner.warmup (did you mean 'n_warmup_steps'?)"),
        ("pruner:\n  type: hyperband\n  reduction_factor: many\nparams: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\n",
         "reduction_factor", "search.pruner.reduction_factor: expected int, got 'many'"),
        ("pruner: {type: median, emergence_margin: 0.5}\nparams: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\n",
         "pruner", "search.pruner.emergence_margin: expected a number >= 1"),
        ("sampler: grid\nparams:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n",
         "train.lr", "the grid sampler needs finite values"),
        ("params: {train.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\nenqueue:\n  - {train.lr: 1.0}\n",
         "train.lr: 1.0}", "train.lr=1.0 is outside its distribution"),
    ],
    ids=["unknown-key", "unknown-type", "low-above-high", "log-of-zero", "not-a-config-key", "wrong-type",
         "bad-choice", "unknown-param-key", "bad-objective", "unknown-sampler", "unknown-pruner-option",
         "pruner-option-type", "emergence-margin", "grid-needs-finite", "enqueue-out-of-range"],
)
def test_search_section_errors_name_the_line(tmp_path, manifests, search, bad_line, message):
    path = study_file(tmp_path, manifests, search)
    with pytest.raises(ConfigError) as err:
        load_search(load_study(path))
    assert f"{path}:{line_of(path, bad_line)}: " in str(err.value)
    assert message in str(err.value)


def test_search_section_parses(tmp_path, manifests):
    path = study_file(tmp_path, manifests, """\
        objective: maximize dev/acc
        n_trials: 4
        sampler: {type: tpe, n_startup_trials: 2, multivariate: true}
        pruner: {type: successive_halving, min_resource: 2}
        params:
          train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
          adapter.hidden: {type: int, low: 32, high: 128, step: 32}
          adapter.k: {type: categorical, choices: [2, 5]}
        """)
    spec = load_search(load_study(path))
    assert (spec.metric, spec.direction, spec.n_trials) == ("dev/acc", "maximize", 4)
    assert spec.params["adapter.hidden"] == optuna.distributions.IntDistribution(32, 128, step=32)
    assert spec.params["train.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    pruner = spec.make_pruner()
    assert isinstance(pruner, EmergenceAwarePruner) and pruner.margin == 1.5
    assert isinstance(pruner.pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(spec.make_sampler(), optuna.samplers.TPESampler)


def test_grid_sampler_enumerates_the_space(tmp_path, manifests):
    path = study_file(tmp_path, manifests, """\
        sampler: grid
        params:
          adapter.hidden: {type: int, low: 32, high: 96, step: 32}
          adapter.k: {type: categorical, choices: [2, 5]}
          train.lr: {type: float, low: 1.0e-3, high: 3.0e-3, step: 1.0e-3}
        """)
    spec = load_search(load_study(path))
    grid = spec.grid()
    assert grid["adapter.hidden"] == [32, 64, 96] and grid["adapter.k"] == [2, 5]
    assert grid["train.lr"] == pytest.approx([1e-3, 2e-3, 3e-3])
    assert isinstance(spec.make_sampler(), optuna.samplers.GridSampler)


def test_fixed_trial_maps_to_config(tmp_path, manifests):
    path = study_file(tmp_path, manifests, """\
        params:
          train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
          adapter.hidden: {type: int, low: 32, high: 128, step: 32}
          adapter.k: {type: categorical, choices: [2, 5]}
        """)
    study = load_study(path)
    cfg = suggest_config(FixedTrial({"train.lr": 3e-3, "adapter.hidden": 96, "adapter.k": 2}), study)
    assert (cfg.train.lr, cfg.adapter.hidden, cfg.adapter.k) == (3e-3, 96, 2)
    base = study.cells[0].config
    assert cfg == replace(base, train=replace(base.train, lr=3e-3), adapter=replace(base.adapter, hidden=96, k=2))


def test_storage_follows_the_number_of_workers():
    assert resolve_storage(None) == "sqlite:///optuna.db"
    assert resolve_storage(None, workers=2) == "optuna-journal.log"
    assert resolve_storage("postgresql://u:p@db/optuna", workers=8) == "postgresql://u:p@db/optuna"
    with pytest.raises(ConfigError, match="SQLite is unsafe for 2 parallel workers"):
        resolve_storage("sqlite:///optuna.db", workers=2)
    with pytest.raises(ConfigError, match="write it as a URL, sqlite:///my.db"):
        resolve_storage("my.db")


def test_dashboard_needs_a_storage(tmp_path, manifests, monkeypatch):
    path = study_file(tmp_path, manifests, LR_SEARCH)
    monkeypatch.chdir(tmp_path)  # no optuna.db or journal here
    result = CliRunner().invoke(dashboard_command, [str(path)])
    assert result.exit_code == 1 and "run `harness search` first or pass --storage" in result.output


def test_emergence_aware_pruner_waits_past_the_emergence_step():
    """A complete trial emerged at step 20: a worse trial is not pruned before 1.5 * 20 = 30 steps."""
    pruner = EmergenceAwarePruner(optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0), margin=1.5)
    study = optuna.create_study(pruner=pruner)
    study.add_trial(optuna.trial.create_trial(
        value=1.0, intermediate_values={s: 5.0 - s / 10 for s in range(10, 50, 10)}, user_attrs={"emergence_step": 20},
    ))
    trial = study.ask()
    trial.report(9.0, 10)
    assert not trial.should_prune()  # before the protected step the median is not consulted
    trial.report(9.0, 30)
    assert trial.should_prune()
    assert pruner.protected_until(study) == 30
    # Without an emerged trial the wrapped pruner decides alone, from the first step.
    plain = optuna.create_study(pruner=EmergenceAwarePruner(optuna.pruners.MedianPruner(n_startup_trials=1)))
    plain.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={10: 4.0}))
    trial = plain.ask()
    trial.report(9.0, 10)
    assert trial.should_prune()


# ------------------------------------------------------------------------------------- training trials


def mlflow_runs(uri: str, experiment: str, kind: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`harness.kind` = '{kind}'")


def test_objective_with_fixed_trial_returns_a_finite_value(tmp_path, manifests):
    study = load_study(study_file(tmp_path, manifests, LR_SEARCH))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("fixed")
    objective = make_objective(study, client=client, parent_run_id=None, experiment_id=experiment_id,
                               runs_root=tmp_path / "runs")
    value = objective(FixedTrial({"train.lr": 1e-2}))
    assert math.isfinite(value) and 0 < value < 10
    (run,) = mlflow_runs(uri, "fixed", "trial")
    assert run.info.status == "FINISHED"
    assert run.data.tags["harness.study"] == "tiny_search" and run.data.tags["optuna.trial_number"] == "0"
    assert run.data.metrics["dev/loss"] == pytest.approx(value)
    assert run.data.tags["harness.cell_hash"] == config_hash(suggest_config(FixedTrial({"train.lr": 1e-2}), study))


def test_hopeless_learning_rate_is_pruned(tmp_path, manifests):
    """lr=1e-7 leaves the dev loss where it starts; lr=1e-2 lowers it: the median pruner stops the
    hopeless trial at its first evaluation. Runs through the CLI command."""
    path = study_file(tmp_path, manifests, LR_SEARCH)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = CliRunner().invoke(search_command, [
        str(path), "--storage", storage, "--tracking-uri", uri, "--runs-root", str(tmp_path / "runs"), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "1 complete, 1 pruned, 0 failed" in result.output

    trials = optuna.load_study(study_name="tiny_search", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[1].params == {"train.lr": 1e-7}
    assert max(trials[1].intermediate_values) < 6  # stopped before its last step
    assert trials[1].intermediate_values[2] > trials[0].intermediate_values[2]

    runs = {r.data.tags["optuna.trial_number"]: r for r in mlflow_runs(uri, "tiny_search", "trial")}
    pruned = runs["1"]
    assert pruned.info.status == "FINISHED" and pruned.data.tags["harness.pruned"] == "true"
    assert pruned.data.tags["optuna.state"] == "PRUNED" and pruned.data.tags["harness.pruned_step"] == "2"
    history = MlflowClient(uri).get_metric_history(pruned.info.run_id, "dev/loss")
    assert [m.step for m in history] == [2]  # its curve is kept
    assert "harness.pruned" not in runs["0"].data.tags

    (parent,) = mlflow_runs(uri, "tiny_search", "search")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best.train.lr"] == "0.01" and parent.data.tags["best.trial_number"] == "0"
    assert parent.data.tags["best.mlflow_run_id"] == runs["0"].info.run_id
    assert parent.data.metrics["best/dev/loss"] == pytest.approx(trials[0].value)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs.values())
    artifacts = MlflowClient(uri).list_artifacts(parent.info.run_id, "plots")
    assert [a.path for a in artifacts] == ["plots/optuna_plots.html"]


def test_two_workers_share_a_journal(tmp_path, manifests):
    """Two worker processes on one journal file run exactly n_trials trials between them."""
    path = study_file(tmp_path, manifests, """\
        objective: dev/loss
        n_trials: 3
        seed: 0
        pruner: none
        sampler: {type: random}
        params:
          train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        """, max_steps=4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = str(tmp_path / "optuna-journal.log")
    study = run_search(load_study(path), workers=2, storage=journal, tracking_uri=uri, runs_root=tmp_path / "runs")

    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    run_ids = [t.user_attrs[ATTR_RUN_ID] for t in trials]
    runs = mlflow_runs(uri, "tiny_search", "trial")
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)  # one MLflow run per trial, none twice
    assert sorted(r.data.tags["optuna.trial_number"] for r in runs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["harness.cell_hash"] for r in runs}) == 3
    assert len(list((tmp_path / "runs").rglob("result.json"))) == 3  # three trainings, no more


def test_workers_that_finish_together_start_exactly_n_trials(tmp_path):
    """Four workers on one journal, ten trials, and trials that end at once: counting the trials and creating
    the next one happen under one lock, so none starts a trial past the total (CI once caught two
    workers both starting the last trial of three)."""
    import threading

    from harness.experiments.search import tally, work

    journal = str(tmp_path / "optuna-journal.log")
    optuna.create_study(storage=open_storage(journal), study_name="race")
    barrier = threading.Barrier(4)

    def objective(trial: optuna.Trial) -> float:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=0.5)  # the first rounds finish together, as in CI
        return float(trial.number)

    def worker() -> None:
        study = optuna.load_study(storage=open_storage(journal), study_name="race")
        work(study, objective, n_trials=10, deadline=None, grace_period=60.0, poll=0.05, storage=journal)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    study = optuna.load_study(storage=open_storage(journal), study_name="race")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 10
    assert tally(study)["counted"] == 10


def test_a_trial_started_past_the_total_steps_aside(tmp_path, manifests):
    """Workers on two machines can still race for the last trial: the loser trains nothing, leaves
    no MLflow run, and its FAIL does not count towards n_trials."""
    from harness.experiments.search import ATTR_SURPLUS, tally
    from harness.experiments.search import SurplusTrial

    study = load_study(study_file(tmp_path, manifests, LR_SEARCH))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("surplus")
    ostudy = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'optuna.db'}"), study_name="s")
    dist = optuna.distributions.FloatDistribution(1e-7, 1e-1, log=True)
    for lr in (1e-3, 2e-3):
        ostudy.add_trial(optuna.trial.create_trial(params={"train.lr": lr}, distributions={"train.lr": dist},
                                                    value=1.0))
    winner, loser = ostudy.ask(), ostudy.ask()  # the other machine's trial 2 is running
    objective = make_objective(study, client=client, parent_run_id=None, experiment_id=experiment_id,
                               runs_root=tmp_path / "runs", study_name="s", n_trials=3)
    with pytest.raises(SurplusTrial, match="trial 3: the study already has 3 trials"):
        objective(loser)
    ostudy.tell(loser, state=TrialState.FAIL)
    ostudy.tell(winner, 1.0)
    assert ostudy.get_trials()[3].user_attrs[ATTR_SURPLUS] is True
    assert tally(ostudy)["counted"] == 3
    assert mlflow_runs(uri, "surplus", "trial") == []
    assert not (tmp_path / "runs").exists()


def test_search_resumes_after_a_killed_worker(tmp_path, manifests):
    """SIGKILL a worker mid-trial; the next run fails that trial, queues it again, and the retry
    resumes its checkpoint into the same MLflow run; the study ends with exactly n_trials."""
    path = study_file(tmp_path, manifests, LR_SEARCH.replace(
        "pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}", "pruner: none"), max_steps=12)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = str(tmp_path / "optuna-journal.log")
    kwargs = dict(storage=journal, tracking_uri=uri, runs_root=str(tmp_path / "runs"), heartbeat_interval=1.0,
                  grace_period=4.0)
    code = (f"from harness.experiments.search import run_search; from harness.experiments.study import load_study; "
            f"run_search(load_study({str(path)!r}), **{kwargs!r})")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(tmp_path / "worker.log", "w") as out:
        worker = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and worker.poll() is None:
            first = _first_trial(journal)
            if first is not None and first.intermediate_values:  # mid-trial, past a checkpoint
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"worker never reached an evaluation:\n{(tmp_path / 'worker.log').read_text()[-3000:]}")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()

    study = run_search(load_study(path), **kwargs)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL  # the killed trial is not counted ...
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2  # ... and the total is still exact
    (retry,) = [t for t in trials if t.user_attrs.get(ATTR_RETRY_OF) == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    assert retry.user_attrs[ATTR_RUN_ID] == trials[0].user_attrs[ATTR_RUN_ID]  # the same MLflow run

    client = MlflowClient(uri)
    run = client.get_run(retry.user_attrs[ATTR_RUN_ID])
    assert run.info.status == "FINISHED" and run.data.tags["optuna.retry_of"] == "0"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # resumed, not restarted: no step logged twice
    assert len(mlflow_runs(uri, "tiny_search", "trial")) == 2


def _first_trial(journal: str) -> optuna.trial.FrozenTrial | None:
    if not Path(journal).exists():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trials = optuna.load_study(study_name="tiny_search", storage=open_storage(journal)).get_trials()
        except KeyError:  # the study is not created yet
            return None
    return trials[0] if trials else None
