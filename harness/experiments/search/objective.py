"""The Optuna objective: one trial is one training run in a child MLflow run."""
from __future__ import annotations


import contextlib
import logging
import math
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from harness.config import ConfigError, RunConfig, config_hash, legacy_hashes
from harness.experiments.study import Study, run_name
from harness.tracking import tags
from harness.tracking.liveness import Heartbeat
from harness.tracking.store import environment_tags, record_failure, with_retries
from harness.tracking.system import system_metrics
from harness.experiments.search.trials import (
    ATTR_EMERGENCE,
    ATTR_ERROR,
    ATTR_HASH,
    ATTR_HEARTBEAT,
    ATTR_INTERRUPTED,
    ATTR_OUT_DIR,
    ATTR_RETRY_OF,
    ATTR_RUN_ID,
    ATTR_SURPLUS,
    claims_a_slot,
)
from harness.experiments.search.spec import SearchSpec, load_search, suggest_config

log = logging.getLogger("harness.search")


@dataclass
class Objective:
    """The Optuna objective: sample a config, train it in a child MLflow run, return the final metric.

    After every evaluation the metric is reported to the trial; when the pruner says so the run
    stops (its curves and weights are kept), its MLflow run is FINISHED with the tags
    ``harness.pruned=true`` and ``optuna.state=PRUNED``, and the trial is PRUNED. A diverging loss
    is pruned the same way (``harness.pruned_reason=diverged``): for the sampler it is a hopeless
    region, not a crash. Any other error marks the MLflow run FAILED (traceback as ``error.txt``)
    and the trial FAIL. Works with :class:`optuna.trial.FixedTrial` (no storage, no pruning).

    ``n_trials`` (the search's total) lets a trial that started after the total was reached by
    other workers step aside without training.

    Example::

        >>> objective = Objective(study, load_search(study), client=make_client(), experiment_id="0",
        ...                       runs_root=tmp)  # doctest: +SKIP
        >>> objective(optuna.trial.FixedTrial({"train.lr": 1e-3}))  # doctest: +SKIP
        4.51
    """

    study: Study
    spec: SearchSpec
    client: Any
    experiment_id: str
    parent_run_id: str | None = None
    runs_root: str | Path = "runs"
    study_name: str = ""
    search_id: str = ""
    n_trials: int | None = None
    heartbeat_interval: float = 30.0
    progress: bool = False
    env: dict[str, str] = field(default_factory=environment_tags)

    def __post_init__(self) -> None:
        self.study_name = self.study_name or self.study.name
        self.search_id = self.search_id or uuid.uuid4().hex[:8]

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        stored = isinstance(trial, optuna.Trial)  # a FixedTrial has no storage: no slots, no heartbeat
        if stored and self.n_trials is not None and not _take_slot(trial, self.n_trials):
            trial.set_user_attr(ATTR_SURPLUS, True)
            raise SurplusTrial(f"trial {trial.number}: the study already has {self.n_trials} trials; not run")
        attrs = dict(trial.user_attrs)
        if stored:
            trial.set_user_attr(ATTR_INTERRUPTED, False)  # a retry inherits its original's attributes
        beat = Heartbeat(lambda: trial.set_user_attr(ATTR_HEARTBEAT, time.time()), self.heartbeat_interval,
                         name=f"heartbeat-{trial.number}", stop_on_error=True)  # stops if declared stale
        with beat if stored else contextlib.nullcontext():
            try:
                cfg = suggest_config(trial, self.study, self.spec)
            except ConfigError as e:
                run_id = self._new_run(trial, None, attrs)
                self._fail(trial, run_id, e, traceback.format_exc())
                raise
            run_id, out_dir = self._resume_or_start(trial, cfg, attrs)
            return self._train(trial, cfg, run_id, out_dir)

    def _new_run(self, trial: optuna.trial.BaseTrial, cfg: RunConfig | None, attrs: dict[str, Any]) -> str:
        from harness.run.trainer import resolve_device

        values = {k: trial.params[k] for k in self.spec.params if k in trial.params}
        run_tags = {
            tags.KIND: "trial", tags.STUDY: self.study.name, tags.SEARCH_ID: self.search_id,
            "optuna.study_name": self.study_name, "optuna.trial_number": str(trial.number), **self.env,
            **{f"axis.{k}": str(v) for k, v in values.items()},
        }
        if self.parent_run_id:
            run_tags[tags.PARENT] = self.parent_run_id
        if cfg is not None:
            run_tags.update({tags.CELL_HASH: config_hash(cfg), tags.DEVICE: str(resolve_device(cfg.train.device))})
        if ATTR_RETRY_OF in attrs:
            run_tags["optuna.retry_of"] = str(attrs[ATTR_RETRY_OF])
        shown = {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in values.items()}  # short run names
        name = f"trial-{trial.number}|{run_name(shown)}"
        run_id = with_retries(self.client.create_run, self.experiment_id, run_name=name, tags=run_tags).info.run_id
        trial.set_user_attr(ATTR_RUN_ID, run_id)
        return run_id

    def _resume_or_start(self, trial: optuna.trial.BaseTrial, cfg: RunConfig, attrs: dict[str, Any]) -> tuple[str, Path]:
        """A retried trial continues its original's checkpoint and MLflow run when they are here."""
        old_dir = Path(attrs[ATTR_OUT_DIR]) if ATTR_OUT_DIR in attrs else None
        if old_dir is not None and attrs.get(ATTR_RUN_ID) and (old_dir / "checkpoint").exists() and \
                attrs.get(ATTR_HASH) in (config_hash(cfg), *legacy_hashes(cfg).values()):
            run_id = attrs[ATTR_RUN_ID]
            with_retries(self.client.update_run, run_id, status="RUNNING")
            with_retries(self.client.set_tag, run_id, "optuna.trial_number", str(trial.number))
            with_retries(self.client.set_tag, run_id, "optuna.retry_of", str(attrs.get(ATTR_RETRY_OF)))
            log.info("trial %d: resuming trial %s from %s", trial.number, attrs.get(ATTR_RETRY_OF), old_dir)
            return run_id, old_dir
        run_id = self._new_run(trial, cfg, attrs)
        out_dir = Path(self.runs_root) / self.study.name / f"search-{self.search_id}" / f"trial-{trial.number:04d}"
        trial.set_user_attr(ATTR_OUT_DIR, str(out_dir))
        trial.set_user_attr(ATTR_HASH, config_hash(cfg))
        return run_id, out_dir

    def _train(self, trial: optuna.trial.BaseTrial, cfg: RunConfig, run_id: str, out_dir: Path) -> float:
        from harness.run.trainer import TrainingDiverged, run_training
        from harness.tracking.trackers import MlflowTracker

        metric, reported = self.spec.metric, set()

        def on_evaluate(step: int, dev: dict[str, float]) -> None:
            value = float(dev[metric])
            trial.report(value, step)
            reported.add(step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {metric} = {value:.4g}")

        log.info("trial %d: %s -> %s", trial.number, {k: trial.params[k] for k in self.spec.params}, out_dir)
        try:
            with system_metrics(self.client, run_id):
                result = run_training(cfg, out_dir, tracker=MlflowTracker(self.client, run_id), progress=self.progress,
                                      on_evaluate=on_evaluate)
        except optuna.TrialPruned as e:
            self._pruned(run_id, str(e), "pruner", max(reported, default=0), out_dir)
            raise
        except TrainingDiverged as e:
            self._pruned(run_id, str(e), "diverged", e.step, out_dir)
            raise optuna.TrialPruned(f"diverged: {e}") from None
        except KeyboardInterrupt:
            if isinstance(trial, optuna.Trial):
                trial.set_user_attr(ATTR_INTERRUPTED, True)
            with_retries(self.client.set_terminated, run_id, "KILLED")
            raise
        except Exception as e:
            self._fail(trial, run_id, e, traceback.format_exc())
            raise
        return self._complete(trial, run_id, result, reported, out_dir)

    def _complete(self, trial: optuna.trial.BaseTrial, run_id: str, result: Any, reported: set[int], out_dir: Path) -> float:
        metric = self.spec.metric
        value, step = float(result.metrics[metric]), result.state.step
        if step not in reported:
            trial.report(value, step)  # the last point of the curve, for the plots
        if not math.isfinite(value):
            error = ValueError(f"final {metric} is {value}")
            self._fail(trial, run_id, error, str(error))
            raise error
        _drop_optimizer_state(out_dir)
        if "emergence_step" in result.metrics:  # read by EmergenceAwarePruner
            trial.set_user_attr(ATTR_EMERGENCE, int(result.metrics["emergence_step"]))
        with_retries(self.client.set_tag, run_id, "optuna.state", "COMPLETE")
        with_retries(self.client.set_tag, run_id, "optuna.value", str(value))
        with_retries(self.client.set_terminated, run_id, "FINISHED")
        return value

    def _pruned(self, run_id: str, message: str, reason: str, step: int, out_dir: Path) -> None:
        for key, value in {"harness.pruned": "true", "harness.pruned_reason": reason, "harness.pruned_step": str(step),
                           "harness.pruned_message": message[:5000], "optuna.state": "PRUNED"}.items():
            with_retries(self.client.set_tag, run_id, key, value)
        with_retries(self.client.set_terminated, run_id, "FINISHED")
        _drop_optimizer_state(out_dir)

    def _fail(self, trial: optuna.trial.BaseTrial, run_id: str, error: BaseException, tb: str) -> None:
        message = f"{type(error).__name__}: {error}"
        log.error("trial %d failed: %s", trial.number, message)
        trial.set_user_attr(ATTR_ERROR, message[:2000])
        record_failure(self.client, run_id, error, tb, extra_tags={"optuna.state": "FAIL"})


def make_objective(study: Study, *, client: Any, parent_run_id: str | None, experiment_id: str,
                   spec: SearchSpec | None = None, **options: Any) -> Objective:
    """:class:`Objective` for ``study`` (its search spec read from the file unless given)."""
    return Objective(study, spec or load_search(study), client, experiment_id, parent_run_id, **options)


def _drop_optimizer_state(out_dir: Path) -> None:
    """A finished trial is never resumed: drop its checkpoint's optimizer state (two thirds of it;
    many trials add up) and keep the weights, which ``harness eval`` can still load."""
    with contextlib.suppress(OSError):
        (out_dir / "checkpoint" / "state.pt").unlink()


class SurplusTrial(RuntimeError):
    """A trial that started after the study reached its total (two workers raced for the last one)."""


def _take_slot(trial: optuna.Trial, n_trials: int) -> bool:
    """Is this trial among the first ``n_trials`` that count? Decided by trial number, which the
    storage hands out atomically, so workers on different machines (which share no lock) agree."""
    before = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    return sum(claims_a_slot(t) for t in before) < n_trials
