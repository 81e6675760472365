"""Running a search: the worker loop, worker processes, the parent MLflow run."""
from __future__ import annotations


import contextlib
import copy
import logging
import math
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from harness.config import ConfigError, read_yaml
from harness.experiments.study import Study
from harness.tracking import tags
from harness.tracking.liveness import parent_run
from harness.tracking.store import experiment_id, make_client, with_retries
from harness.experiments.search.trials import ATTR_METRIC, ATTR_SEARCH_ID, tally
from harness.experiments.search.spec import SearchSpec, load_search
from harness.experiments.search.storage import (
    check_default_storages,
    creation_lock,
    fail_stale_trials,
    load_or_create_study,
    requeue_interrupted,
    resolve_storage,
    safe_url,
)
from harness.experiments.search.objective import make_objective
from harness.experiments.search.summary import summarise

log = logging.getLogger("harness.search")


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int | None,
    deadline: float | None,
    grace_period: float,
    poll: float,
    storage: str,
    client: Any | None = None,
) -> None:
    """One worker: run trials until the study holds ``n_trials`` counted trials (or the deadline).

    When the remaining slots are all taken by running trials the worker waits: one of them may
    belong to a dead worker, and its retry must still run.
    """
    target = math.inf if n_trials is None else n_trials
    lock = creation_lock(study, storage)
    while True:
        fail_stale_trials(study, grace_period=grace_period, client=client)
        # Counting the trials and creating the next one happen under one lock, so that two workers
        # on this machine that finish together do not both start the last trial. The objective
        # releases the lock as soon as Optuna has created its trial; workers on other machines
        # can still race, and the loser steps aside (see ``_take_slot``).
        lock.acquire()
        try:
            n = tally(study)
            if n["counted"] >= target or (deadline is not None and time.time() >= deadline):
                return
            if n["waiting"] == 0 and n["counted"] + n["running"] >= target:
                lock.release()
                time.sleep(poll)
                continue

            def created(trial: optuna.Trial) -> float:
                lock.release()
                return objective(trial)

            try:
                study.optimize(created, n_trials=1, catch=(Exception,), gc_after_trial=True)
            except optuna.exceptions.UpdateFinishedTrialError as e:
                log.warning("a trial was declared dead while it ran (raise the heartbeat grace period): %s", e)
        finally:
            if lock.is_locked:  # Optuna failed before the objective ran, or we returned
                lock.release()


@dataclass
class SearchJob:
    """Everything a worker needs (picklable: for multiprocessing's spawn, and for SLURM array tasks)."""

    study: Study
    spec: SearchSpec
    storage: str
    study_name: str
    search_id: str
    n_trials: int | None
    deadline: float | None
    tracking_uri: str | None
    runs_root: str
    parent_run_id: str
    experiment_id: str
    heartbeat_interval: float
    grace_period: float
    progress: bool
    threads: int | None
    worker: int = 0

    def run(self, *, optuna_study: optuna.Study | None = None, client: Any | None = None) -> None:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        optuna_study = optuna_study or load_or_create_study(self.storage, self.study_name, self.spec, worker=self.worker)
        client = client or make_client(self.tracking_uri)
        objective = make_objective(
            self.study, client=client, parent_run_id=self.parent_run_id, experiment_id=self.experiment_id,
            runs_root=self.runs_root, spec=self.spec, study_name=self.study_name, search_id=self.search_id,
            n_trials=self.n_trials, heartbeat_interval=self.heartbeat_interval, progress=self.progress,
        )
        work(optuna_study, objective, n_trials=self.n_trials, deadline=self.deadline, grace_period=self.grace_period,
              poll=min(5.0, self.heartbeat_interval), storage=self.storage, client=client)


def _worker_main(job: SearchJob) -> None:
    """Entry point of a spawned worker process."""
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker{job.worker} %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        job.run()
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _run_workers(job: SearchJob, workers: int) -> None:
    # N workers each using every core would fight over them; split the cores instead.
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch/MLflow state and threads
    procs = []
    for i in range(workers):
        worker_job = copy.copy(job)
        worker_job.worker, worker_job.threads = i, threads
        p = ctx.Process(target=_worker_main, args=(worker_job,), name=f"search-worker-{i}")
        p.start()
        procs.append(p)
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        # Let every worker checkpoint and mark its trial interrupted, then stop.
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=120)
            if p.is_alive():
                p.terminate()
        raise
    bad = [f"{p.name} exited with code {p.exitcode}" for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError("; ".join(bad) + " (see its log above)")


def _parent_run(client: Any, exp_id: str, study: Study, spec: SearchSpec, optuna_study: optuna.Study,
                search_id: str, storage: str) -> str:
    """The search's one parent run (elected among workers, like a study's), tagged with the spec."""
    run_id, _ = parent_run(client, exp_id, {tags.KIND: "search", tags.SEARCH_ID: search_id},
                           run_name=f"search:{optuna_study.study_name}")
    run_tags = {tags.STUDY: study.name, "optuna.study_name": optuna_study.study_name, **spec.describe(),
                "optuna.storage": safe_url(storage)}
    for key, value in run_tags.items():
        with_retries(client.set_tag, run_id, key, value)
    with_retries(client.log_text, run_id, study.path.read_text(), "study.yaml")
    return run_id


def _open_search(storage: str, study_name: str, spec: SearchSpec, where: Any) -> tuple[optuna.Study, str]:
    """The Optuna study and its search id; a new one is named and gets its enqueued trials first,
    and trials stopped by an interrupt are queued again."""
    optuna_study = load_or_create_study(storage, study_name, spec, where=where)
    search_id = optuna_study.user_attrs.get(ATTR_SEARCH_ID)
    if search_id is None:  # a new study: name its outputs and run its enqueued trials first
        search_id = uuid.uuid4().hex[:8]
        optuna_study.set_user_attr(ATTR_SEARCH_ID, search_id)
        optuna_study.set_user_attr(ATTR_METRIC, spec.metric)
        for params in spec.enqueue:
            optuna_study.enqueue_trial(params)
    requeue_interrupted(optuna_study)
    return optuna_study, search_id


def _budget(spec, n_trials: int | None, timeout: float | None, where) -> tuple[int | None, float | None]:
    """Trials and seconds the search runs for: the command line's, else the study file's (a grid: its size)."""
    total = n_trials if n_trials is not None else spec.n_trials
    if total is None and spec.sampler == "grid":
        total = math.prod(len(v) for v in spec.grid().values())
    timeout = timeout if timeout is not None else spec.timeout
    if total is None and timeout is None:
        raise ConfigError(f"{where('search')}search: set n_trials or timeout (or pass --n-trials), or the search never ends")
    return total, timeout


def plan_search(
    study: Study,
    *,
    n_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    tracking_uri: str | None = None,
    runs_root: str | Path = "runs",
    timeout: float | None = None,
    heartbeat_interval: float = 30.0,
    grace_period: float | None = None,
    progress: bool = False,
) -> tuple[optuna.Study, SearchJob]:
    """Open (or continue) the search's Optuna study and its parent MLflow run; returns them as the job
    every worker runs (:meth:`SearchJob.run`). :func:`run_search` runs it here; the SLURM launcher
    (:mod:`harness.experiments.slurm`) in array tasks. Arguments as for :func:`run_search`."""
    if workers < 1:
        raise ConfigError(f"--workers: expected >= 1, got {workers}")
    _, where = read_yaml(study.path)
    spec = load_search(study)
    total, timeout = _budget(spec, n_trials, timeout, where)
    explicit = storage is not None
    storage = resolve_storage(storage, workers=workers)
    check_default_storages(storage, study_name or study.name, explicit=explicit)
    grace = grace_period if grace_period is not None else 4 * heartbeat_interval
    deadline = time.time() + timeout if timeout is not None else None

    optuna_study, search_id = _open_search(storage, study_name or study.name, spec, where)

    client = make_client(tracking_uri)
    exp_id = experiment_id(client, study.experiment)
    parent = _parent_run(client, exp_id, study, spec, optuna_study, search_id, storage)
    log.info("search %s (%s): %s trials, storage %s, MLflow parent run %s", optuna_study.study_name, search_id,
             total if total is not None else "unlimited", safe_url(storage), parent)
    job = SearchJob(
        study=study, spec=spec, storage=storage, study_name=optuna_study.study_name, search_id=search_id,
        n_trials=total, deadline=deadline, tracking_uri=tracking_uri, runs_root=str(runs_root),
        parent_run_id=parent, experiment_id=exp_id, heartbeat_interval=heartbeat_interval,
        grace_period=grace, progress=progress and workers == 1, threads=None,
    )
    return optuna_study, job


def finish_search(optuna_study: optuna.Study, job: SearchJob, status: str) -> None:
    """Write the best trial, the counts and the plots onto the parent run, and close it with ``status``
    (idempotent: every worker that sees the search complete may call it)."""
    summarise(optuna_study, job.spec, make_client(job.tracking_uri), job.parent_run_id, status)


def run_search(study: Study, *, workers: int = 1, progress: bool = False, **options: Any) -> optuna.Study:
    """Run (or continue) the study's search until its storage holds ``n_trials`` finished trials.

    ``options`` are :func:`plan_search`'s (``n_trials``, ``storage``, ``study_name``, ``tracking_uri``,
    ``runs_root``, ``timeout``, ``heartbeat_interval``, ``grace_period``); an unknown one is a TypeError there.
    ``n_trials`` and ``timeout`` override the study file's. ``workers > 1`` starts that many local
    processes sharing the storage (default: the journal file ``optuna-journal.log``); a database
    URL lets workers on other machines join by running the same command. At the end the parent
    MLflow run (``harness.kind=search``) gets the best trial's parameters (``best.*`` tags, mutable
    so that a continued search can update them), its value (metric ``best/<metric>``), trial counts
    and the Optuna plots (``plots/optuna_plots.html``, self-contained).

    A worker whose trial shows no heartbeat for ``grace_period`` seconds (default: 4 heartbeat
    intervals) is presumed dead: its trial is failed and queued again, resuming its checkpoint.

    Example::

        >>> s = run_search(load_study("studies/search_quickstart.yaml"), n_trials=4, workers=2)  # doctest: +SKIP
        >>> len([t for t in s.trials if t.state.is_finished()])  # doctest: +SKIP
        4
    """
    optuna_study, job = plan_search(study, workers=workers, progress=progress, **options)
    status = "FINISHED"
    try:
        if workers == 1:
            job.run(optuna_study=optuna_study)
        else:
            _run_workers(job, workers)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception:
        status = "FAILED"
        raise
    finally:
        try:
            finish_search(optuna_study, job, status)
        except Exception:
            if status == "FINISHED":
                raise
            log.exception("could not summarise the search on its parent run")  # keep the first error
    return optuna_study
