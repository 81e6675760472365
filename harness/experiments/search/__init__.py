"""Optuna searches over run configurations, every trial an MLflow run.

A study file with a ``search:`` section describes what to vary and how to search it::

    name: lr_search
    base:                                   # a run configuration, as in any study file
      train: {max_steps: 300, eval_every: 50}
    search:
      objective: dev/wer                    # dev/wer (default) | dev/loss | dev/acc, optionally "maximize dev/acc"
      n_trials: 20                          # the study's total: re-running continues up to it
      timeout: 3600                         # seconds; no new trial starts after it (optional)
      seed: 0                               # sampler seed (worker i uses seed + i)
      sampler: tpe                          # tpe | random | grid, or {type: tpe, n_startup_trials: 5, ...}
      pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 50, emergence_margin: 1.5}
                                            # median | successive_halving | hyperband | none
      params:                               # config key -> distribution
        train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        adapter.hidden: {type: int, low: 256, high: 2048, step: 256}
        adapter.k: {type: categorical, choices: [2, 5, 10]}
      enqueue:                              # trials to run first (e.g. the paper's recipe), optional
        - {train.lr: 1.0e-4, adapter.hidden: 2048, adapter.k: 5}

Each trial samples its parameters onto ``base``, is validated into a :class:`~harness.config.RunConfig`
and trained by :func:`harness.run.trainer.run_training` into a child MLflow run of the search's parent run.
The objective's metric is reported after every evaluation, so the pruner can stop a hopeless trial
early; a pruned trial keeps its curves and is tagged ``harness.pruned=true``.

Pruning is *emergence-aware*: this recipe's accuracy stays flat for a while and then jumps
(capability emergence, :mod:`harness.run.emergence`), so a trial judged on its early plateau would be
cut just before it takes off. Each complete trial records its ``emergence_step``; no trial is pruned
before ``emergence_margin`` (default 1.5) times the latest emergence step seen so far. Until some
trial has emerged the pruner's own settings (``n_warmup_steps``) apply alone.

Storage: one SQLite file for one worker, a journal file for several workers on one machine (SQLite
is unsafe for concurrent writers), any database URL (PostgreSQL) for many machines. Re-running a
search continues the same Optuna study. A trial whose worker died (no heartbeat for a grace period)
or was interrupted is failed and queued again with the same parameters; the retry resumes from the
dead trial's checkpoint into the same MLflow run.

Example::

    >>> from harness.experiments.study import load_study
    >>> from harness.experiments.search import run_search
    >>> optuna_study = run_search(load_study("studies/search_quickstart.yaml"), workers=2)  # doctest: +SKIP
    >>> optuna_study.best_params  # doctest: +SKIP
    {'train.lr': 0.0021}

The package, one concern a module: :mod:`~.spec` (the ``search:`` section), :mod:`~.pruner`
(emergence-aware pruning), :mod:`~.objective` (one trial, one training run), :mod:`~.trials`
(trial attributes and counting), :mod:`~.storage` (Optuna storages, dead and interrupted trials),
:mod:`~.workers` (the worker loop and processes), :mod:`~.summary` (best trial and plots).
"""
from harness.experiments.search.objective import Objective, SurplusTrial, make_objective
from harness.experiments.search.pruner import EmergenceAwarePruner
from harness.experiments.search.spec import METRICS, SearchSpec, load_search, suggest_config
from harness.experiments.search.storage import (
    DEFAULT_JOURNAL,
    DEFAULT_SQLITE,
    fail_stale_trials,
    open_storage,
    resolve_storage,
    safe_url,
)
from harness.experiments.search.summary import write_plots
from harness.experiments.search.trials import (
    ATTR_EMERGENCE,
    ATTR_ERROR,
    ATTR_RETRY_OF,
    ATTR_RUN_ID,
    ATTR_SURPLUS,
    MAX_RETRIES,
    tally,
)
from harness.experiments.search.workers import SearchJob, finish_search, plan_search, run_search, work

__all__ = [
    "ATTR_EMERGENCE", "ATTR_ERROR", "ATTR_RETRY_OF", "ATTR_RUN_ID", "ATTR_SURPLUS", "DEFAULT_JOURNAL", "DEFAULT_SQLITE",
    "EmergenceAwarePruner", "MAX_RETRIES", "METRICS", "Objective", "SearchSpec", "SurplusTrial", "fail_stale_trials", "load_search",
    "SearchJob", "finish_search", "make_objective", "open_storage", "plan_search", "resolve_storage", "run_search", "safe_url", "suggest_config", "tally",
    "work", "write_plots",
]
