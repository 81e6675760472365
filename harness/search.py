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
and trained by :func:`harness.train.run_training` into a child MLflow run of the search's parent run.
The objective's metric is reported after every evaluation, so the pruner can stop a hopeless trial
early; a pruned trial keeps its curves and is tagged ``harness.pruned=true``.

Pruning is *emergence-aware*: this recipe's accuracy stays flat for a while and then jumps
(capability emergence, :mod:`harness.emergence`), so a trial judged on its early plateau would be
cut just before it takes off. Each complete trial records its ``emergence_step``; no trial is pruned
before ``emergence_margin`` (default 1.5) times the latest emergence step seen so far. Until some
trial has emerged the pruner's own settings (``n_warmup_steps``) apply alone.

Storage: one SQLite file for one worker, a journal file for several workers on one machine (SQLite
is unsafe for concurrent writers), any database URL (PostgreSQL) for many machines. Re-running a
search continues the same Optuna study. A trial whose worker died (no heartbeat for a grace period)
or was interrupted is failed and queued again with the same parameters; the retry resumes from the
dead trial's checkpoint into the same MLflow run.

Example::

    >>> from harness.study import load_study
    >>> from harness.search import run_search
    >>> optuna_study = run_search(load_study("studies/search_quickstart.yaml"), workers=2)  # doctest: +SKIP
    >>> optuna_study.best_params  # doctest: +SKIP
    {'train.lr': 0.0021}
"""
from __future__ import annotations

import builtins
import contextlib
import copy
import hashlib
import html
import inspect
import json
import logging
import math
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from harness.config import (
    ConfigError,
    RunConfig,
    SourceMap,
    build_config,
    coerce_value,
    config_hash,
    legacy_hash,
    read_yaml,
    set_path,
)
from harness.runner import TAG_HASH, TAG_KIND, TAG_STUDY, environment_tags, make_client
from harness.study import Study, check_references, run_name

log = logging.getLogger("harness.search")

DEFAULT_SQLITE = "sqlite:///optuna.db"
DEFAULT_JOURNAL = "optuna-journal.log"
METRICS = {"dev/wer": "minimize", "dev/loss": "minimize", "dev/acc": "maximize"}
"""Objective metrics (those reported after each evaluation) and their natural direction."""

_SEARCH_KEYS = ("params", "objective", "n_trials", "timeout", "seed", "sampler", "pruner", "enqueue")
_PARAM_KEYS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "step", "log"),
    "categorical": ("type", "choices"),
}
_SAMPLERS: dict[str, Callable[[], type]] = {
    "tpe": lambda: optuna.samplers.TPESampler,
    "random": lambda: optuna.samplers.RandomSampler,
    "grid": lambda: optuna.samplers.GridSampler,
}
_PRUNERS: dict[str, Callable[[], type]] = {
    "median": lambda: optuna.pruners.MedianPruner,
    "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": lambda: optuna.pruners.HyperbandPruner,
    "none": lambda: optuna.pruners.NopPruner,
}

# Trial user attributes (visible in optuna-dashboard). They travel with a retried trial.
ATTR_RUN_ID = "mlflow_run_id"
ATTR_OUT_DIR = "out_dir"
ATTR_HASH = "config_hash"
ATTR_HEARTBEAT = "heartbeat"  # unix time, refreshed while the trial runs
ATTR_ERROR = "error"  # the trial raised: it is finished (FAIL) and counts towards n_trials
ATTR_INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: FAIL, not counted, queued again on the next start
ATTR_RETRY_OF = "retry_of"  # number of the trial this one repeats
ATTR_RETRIES = "retries"
ATTR_EMERGENCE = "emergence_step"  # of a complete trial (absent when it did not emerge)
ATTR_SURPLUS = "surplus"  # started after the total was reached (a race between workers): FAIL, not counted
# Study user attributes
ATTR_SEARCH_ID = "harness.search_id"
ATTR_METRIC = "harness.metric"

MAX_RETRIES = 2
"""A trial whose worker dies this many times more (e.g. killed for memory) is failed for good."""


# --------------------------------------------------------------------------------------------
# The search section


@dataclass(frozen=True)
class SearchSpec:
    """The validated ``search:`` section of a study file (see :func:`load_search`)."""

    params: dict[str, BaseDistribution]
    metric: str = "dev/wer"
    direction: str = "minimize"
    n_trials: int | None = None
    timeout: float | None = None
    seed: int | None = None
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    emergence_margin: float | None = 1.5
    enqueue: tuple[dict[str, Any], ...] = ()

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's finite values (the grid sampler's search space)."""
        return {k: _finite_values(k, d) for k, d in self.params.items()}

    def make_sampler(self, *, worker: int = 0) -> optuna.samplers.BaseSampler:
        """The sampler; parallel workers get different seeds so that their random trials differ."""
        seed = None if self.seed is None else self.seed + worker
        cls = _SAMPLERS[self.sampler]()
        if self.sampler == "grid":
            return cls(self.grid(), seed=seed, **self.sampler_options)
        return cls(seed=seed, **self.sampler_options)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        pruner = _PRUNERS[self.pruner]()(**self.pruner_options)
        if self.pruner == "none" or self.emergence_margin is None:
            return pruner
        return EmergenceAwarePruner(pruner, margin=self.emergence_margin)

    def describe(self) -> dict[str, str]:
        """Flat ``search.*`` tags for the parent MLflow run."""
        return {
            "search.objective": f"{self.direction} {self.metric}",
            "search.n_trials": str(self.n_trials),
            "search.timeout": str(self.timeout),
            "search.seed": str(self.seed),
            "search.sampler": json.dumps({"type": self.sampler, **self.sampler_options}),
            "search.pruner": json.dumps(
                {"type": self.pruner, **self.pruner_options, "emergence_margin": self.emergence_margin}
            ),
            "search.params": json.dumps({k: _describe(d) for k, d in self.params.items()}),
        }


def _finite_values(key: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    assert isinstance(dist, FloatDistribution)
    if dist.step is None:
        raise ValueError(f"{key} is a continuous float range")
    n = round((dist.high - dist.low) / dist.step)
    return [dist.low + i * dist.step for i in range(n + 1)]


def _describe(dist: BaseDistribution) -> dict[str, Any]:
    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    return {"type": kind, "low": dist.low, "high": dist.high, "log": dist.log, "step": dist.step}


def _contains(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(dist, IntDistribution) and not isinstance(value, int):
        return False
    if not dist.low <= value <= dist.high:
        return False
    return dist.step is None or math.isclose((value - dist.low) / dist.step, round((value - dist.low) / dist.step))


def _number(value: Any, *, integer: bool = False) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float))


def load_search(study: Study) -> SearchSpec:
    """Validate the ``search:`` section of ``study``'s file; errors name the file, the line and the choices.

    Every searched key is checked by building a run configuration from the study's base with the
    distribution's bounds (or each choice), so a typo or a wrong type fails before any trial runs.

    Example::

        >>> spec = load_search(load_study("studies/search_quickstart.yaml"))  # doctest: +SKIP
        >>> spec.metric, list(spec.params)  # doctest: +SKIP
        ('dev/loss', ['train.lr'])
    """
    _, where = read_yaml(study.path)
    raw = study.raw.get("search")
    if raw is None:
        raise ConfigError(f"{where('')}study {study.name!r} has no 'search:' section (see harness/search.py for its keys)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where('search')}search: expected a mapping with keys {', '.join(_SEARCH_KEYS)}")
    for key in ("axes", "zip", "include", "exclude"):
        if study.raw.get(key):
            raise ConfigError(
                f"{where(key)}{key}: a search varies its parameters under search.params; "
                f"write a grid as categorical params with 'sampler: grid', or run the grid with 'harness study run'"
            )
    _unknown(raw, _SEARCH_KEYS, "search", where)

    # objective: "dev/wer" or "minimize dev/wer"
    objective = raw.get("objective", "dev/wer")
    words = objective.split() if isinstance(objective, str) else []
    metric = words[-1] if words else None
    direction = words[0] if len(words) == 2 else METRICS.get(metric or "", "")
    if metric not in METRICS or len(words) not in (1, 2) or direction not in ("minimize", "maximize"):
        raise ConfigError(
            f"{where('search.objective')}search.objective: expected '[minimize|maximize] METRIC' with METRIC one of "
            f"{', '.join(METRICS)}, got {objective!r}"
        )

    def integer(key: str, minimum: int, *, optional: bool = True) -> int | None:
        value = raw.get(key)
        if value is None and optional:
            return None
        if not _number(value, integer=True) or value < minimum:
            raise ConfigError(f"{where('search.' + key)}search.{key}: expected an integer >= {minimum} or null, got {value!r}")
        return value

    n_trials = integer("n_trials", 1)
    seed = integer("seed", 0)
    timeout = raw.get("timeout")
    if timeout is not None and (not _number(timeout) or timeout <= 0):
        raise ConfigError(f"{where('search.timeout')}search.timeout: expected seconds > 0 or null, got {timeout!r}")

    params = _load_params(raw.get("params"), study, where)
    sampler, sampler_options = _load_choice(raw.get("sampler", "tpe"), "sampler", _SAMPLERS, where, skip=("seed", "search_space"))
    pruner_raw = raw.get("pruner", "median")
    margin = 1.5
    if isinstance(pruner_raw, dict) and "emergence_margin" in pruner_raw:
        pruner_raw = dict(pruner_raw)
        margin = pruner_raw.pop("emergence_margin")
        if margin is not None and (not _number(margin) or margin < 1):
            raise ConfigError(
                f"{where('search.pruner.emergence_margin')}search.pruner.emergence_margin: expected a number >= 1 "
                f"(prune no earlier than this many times the latest emergence step) or null (off), got {margin!r}"
            )
    pruner, pruner_options = _load_choice(pruner_raw, "pruner", _PRUNERS, where, skip=())
    spec = SearchSpec(
        params=params, metric=metric, direction=direction, n_trials=n_trials,
        timeout=float(timeout) if timeout is not None else None, seed=seed,
        sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
        emergence_margin=None if margin is None else float(margin),
    )
    if sampler == "grid":
        for key, dist in params.items():
            try:
                _finite_values(key, dist)
            except ValueError:
                raise ConfigError(
                    f"{where('search.params.' + key)}search.params.{key}: the grid sampler needs finite values; "
                    f"give it a step or make it categorical"
                ) from None
        size = math.prod(len(v) for v in spec.grid().values())
        if n_trials is not None and n_trials > size:
            raise ConfigError(f"{where('search.n_trials')}search.n_trials: {n_trials} exceeds the grid's {size} points")
    enqueue = _load_enqueue(raw.get("enqueue"), params, where)
    return SearchSpec(**{**spec.__dict__, "enqueue": enqueue})


def _unknown(mapping: Mapping, valid: tuple[str, ...], what: str, where: SourceMap) -> None:
    import difflib

    for key in mapping:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where(f'{what}.{key}')}unknown key {what}.{key}{hint}. Valid keys: {', '.join(valid)}")


def _load_params(raw: Any, study: Study, where: SourceMap) -> dict[str, BaseDistribution]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{where('search.params')}search.params: expected a mapping of config keys to distributions, "
            f"e.g. train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}"
        )
    params: dict[str, BaseDistribution] = {}
    for key, spec in raw.items():
        at = f"search.params.{key}"
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str) or spec["type"] not in _PARAM_KEYS:
            got = spec.get("type") if isinstance(spec, dict) else spec
            raise ConfigError(
                f"{where(at)}{at}: expected a mapping with 'type' one of {', '.join(_PARAM_KEYS)}, got {got!r}"
            )
        kind = spec["type"]
        _unknown(spec, _PARAM_KEYS[kind], at, where)
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where(at + '.choices')}{at}.choices: expected a non-empty list, got {choices!r}")
            for i, c in enumerate(choices):
                if c is not None and not isinstance(c, (bool, int, float, str)):
                    raise ConfigError(
                        f"{where(f'{at}.choices[{i}]')}{at}.choices[{i}]: choices must be scalars "
                        f"(null, bool, int, float, str), got {c!r}"
                    )
            dist: BaseDistribution = CategoricalDistribution(choices)
            samples = [(v, f"{at}.choices[{i}]") for i, v in enumerate(choices)]
        else:
            integer = kind == "int"
            for bound in ("low", "high"):
                if not _number(spec.get(bound), integer=integer):
                    raise ConfigError(
                        f"{where(f'{at}.{bound}')}{at}.{bound}: expected {'an integer' if integer else 'a number'}, "
                        f"got {spec.get(bound)!r}"
                    )
            log_scale = spec.get("log", False)
            if not isinstance(log_scale, bool):
                raise ConfigError(f"{where(at + '.log')}{at}.log: expected true or false, got {log_scale!r}")
            step = spec.get("step", 1 if integer else None)
            if step is not None and not _number(step, integer=integer):
                raise ConfigError(f"{where(at + '.step')}{at}.step: expected {'an integer' if integer else 'a number'}, got {step!r}")
            try:
                if integer:
                    dist = IntDistribution(spec["low"], spec["high"], log=log_scale, step=step)
                else:
                    dist = FloatDistribution(float(spec["low"]), float(spec["high"]), log=log_scale,
                                             step=None if step is None else float(step))
            except ValueError as e:
                raise ConfigError(f"{where(at)}{at}: invalid {kind} distribution: {e}") from None
            samples = [(dist.low, f"{at}.low"), (dist.high, f"{at}.high")]
        # A searched key must be a RunConfig field taking these values: build a config with each.
        for value, line_key in samples:
            try:
                _config_with(study, {key: value}, _param_where(where, {key: line_key}))
            except ConfigError as e:
                raise ConfigError(f"{e} (checking {line_key} = {value!r})") from None
        params[str(key)] = dist
    return params


def _load_choice(
    raw: Any, what: str, registry: Mapping[str, Callable[[], type]], where: SourceMap, *, skip: tuple[str, ...]
) -> tuple[str, dict[str, Any]]:
    """``tpe`` or ``{type: tpe, option: value}``; options are checked against the class's signature."""
    at = f"search.{what}"
    options = dict(raw) if isinstance(raw, dict) else {"type": raw}
    name = options.pop("type", None)
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"{where(at)}{at}: expected one of {', '.join(registry)} (or {{type: NAME, ...options}}), got {name!r}")
    cls = registry[name]()
    signature = inspect.signature(cls)
    valid = tuple(p for p in signature.parameters if p not in skip)
    extra = ("emergence_margin",) if what == "pruner" and name != "none" else ()
    _unknown(options, ("type", *valid, *extra), at, where)
    for key, value in options.items():
        annotation = signature.parameters[key].annotation
        try:  # annotations are strings (postponed); those that name plain types can be checked
            tp = eval(annotation, {"__builtins__": builtins}) if isinstance(annotation, str) else annotation
        except Exception:  # noqa: BLE001 - e.g. Callable[...]: a Python object, not a YAML value
            raise ConfigError(f"{where(f'{at}.{key}')}{at}.{key}: takes a Python object and cannot be set in a study file") from None
        line = where(f"{at}.{key}")
        try:
            options[key] = coerce_value(tp, value, f"{at}.{key}", lambda _k, line=line: line)
        except TypeError:
            pass  # an annotation _coerce does not know: let the class check the value
    try:
        if name == "grid":
            cls({"x": [0]}, **options)
        else:
            cls(**options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where(at)}{at}: invalid {name} options {options}: {e}") from None
    return name, options


def _load_enqueue(raw: Any, params: dict[str, BaseDistribution], where: SourceMap) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where('search.enqueue')}search.enqueue: expected a list of {{param: value}} mappings")
    out = []
    for i, entry in enumerate(raw):
        at = f"search.enqueue[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where(at)}{at}: expected a mapping of searched keys to values, got {entry!r}")
        for key, value in entry.items():
            if key not in params:
                raise ConfigError(f"{where(at)}{at}: {key!r} is not a searched parameter. Searched: {', '.join(params)}")
            if not _contains(params[key], value):
                raise ConfigError(f"{where(at)}{at}: {key}={value!r} is outside its distribution {_describe(params[key])}")
        out.append(dict(entry))
    return tuple(out)


def _param_where(where: SourceMap, lines: dict[str, str]) -> SourceMap:
    """Map config keys to study-file lines: searched keys to their param entry, the rest to base."""
    mapped = {k[len("base."):]: ln for k, ln in where.lines.items() if k.startswith("base.")}
    for key, line_key in lines.items():
        line = where.lines.get(line_key) or where.lines.get(line_key.rsplit(".", 1)[0])
        if line is not None:
            mapped[key] = line
    return SourceMap(where.path, mapped)


def _config_with(study: Study, values: Mapping[str, Any], where: SourceMap) -> RunConfig:
    data = copy.deepcopy(study.base)
    for key, value in values.items():
        try:
            set_path(data, key, value)
        except ConfigError:
            raise ConfigError(f"{where(key)}{key}: not a run configuration key (a section is in the way)") from None
    cfg = build_config(data, where=where)
    check_references(cfg, where)
    return cfg


# --------------------------------------------------------------------------------------------
# Emergence-aware pruning


class EmergenceAwarePruner(optuna.pruners.BasePruner):
    """Wraps a pruner so that no trial is pruned before ``margin`` times the latest emergence step
    of the complete trials (their ``emergence_step`` user attribute); until one has emerged, the
    wrapped pruner decides alone.

    Example::

        >>> pruner = EmergenceAwarePruner(optuna.pruners.MedianPruner(n_startup_trials=2), margin=1.5)
        >>> study = optuna.create_study(pruner=pruner)
    """

    def __init__(self, pruner: optuna.pruners.BasePruner, *, margin: float = 1.5) -> None:
        if margin < 1:
            raise ValueError(f"margin must be >= 1, got {margin}")
        self.pruner, self.margin = pruner, margin

    def protected_until(self, study: optuna.Study) -> float:
        """The step before which no trial is pruned (0 when no complete trial has emerged)."""
        steps = [t.user_attrs[ATTR_EMERGENCE] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if ATTR_EMERGENCE in t.user_attrs]
        return self.margin * max(steps) if steps else 0.0

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.protected_until(study):
            return False
        return self.pruner.prune(study, trial)


# --------------------------------------------------------------------------------------------
# Trials


def suggest_config(trial: optuna.trial.BaseTrial, study: Study, spec: SearchSpec | None = None) -> RunConfig:
    """Sample ``spec``'s parameters with ``trial`` onto the study's base and validate the result.

    Example::

        >>> trial = optuna.trial.FixedTrial({"train.lr": 3e-3})
        >>> suggest_config(trial, load_study("studies/search_quickstart.yaml")).train.lr  # doctest: +SKIP
        0.003
    """
    spec = spec or load_search(study)
    values: dict[str, Any] = {}
    for key, dist in spec.params.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    _, where = read_yaml(study.path)
    return _config_with(study, values, _param_where(where, {k: f"search.params.{k}" for k in values}))


def _counts(t: FrozenTrial) -> bool:
    """Does this finished trial count towards ``n_trials``? Complete, pruned, or failed by its own error."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and bool(t.user_attrs.get(ATTR_ERROR)) and not t.user_attrs.get(ATTR_SURPLUS)


def _claims_a_slot(t: FrozenTrial) -> bool:
    """Finished and counted, or still to run (running, or queued)."""
    return _counts(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)


class _Heartbeat:
    """Refreshes the trial's ``heartbeat`` attribute so that other workers can tell it is alive."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"heartbeat interval: expected a finite number of seconds > 0, got {interval}")
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial.number}", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.trial.set_user_attr(ATTR_HEARTBEAT, time.time())
            except Exception as e:  # noqa: BLE001 - e.g. another worker declared the trial stale
                log.warning("trial %d: heartbeat stopped: %s", self.trial.number, e)
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _mlflow(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call the MLflow client, retrying briefly: parallel workers share one SQLite tracking store."""
    delay = 0.5
    for attempt in range(6):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if attempt == 5:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    return None


def make_objective(
    study: Study,
    *,
    client: Any,
    parent_run_id: str | None,
    experiment_id: str,
    runs_root: str | Path = "runs",
    spec: SearchSpec | None = None,
    study_name: str | None = None,
    search_id: str | None = None,
    n_trials: int | None = None,
    heartbeat_interval: float = 30.0,
    progress: bool = False,
) -> Callable[[optuna.trial.BaseTrial], float]:
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

        >>> objective = make_objective(study, client=make_client(), parent_run_id=None,
        ...                            experiment_id="0", runs_root=tmp)  # doctest: +SKIP
        >>> objective(optuna.trial.FixedTrial({"train.lr": 1e-3}))  # doctest: +SKIP
        4.51
    """
    spec = spec or load_search(study)
    study_name = study_name or study.name
    search_id = search_id or uuid.uuid4().hex[:8]
    metric = spec.metric
    env = environment_tags()

    def objective(trial: optuna.trial.BaseTrial) -> float:
        stored = isinstance(trial, optuna.Trial)  # a FixedTrial has no storage: no slots, no heartbeat
        if stored and n_trials is not None and not _take_slot(trial, n_trials):
            trial.set_user_attr(ATTR_SURPLUS, True)
            raise _Surplus(f"trial {trial.number}: the study already has {n_trials} trials; not run")
        attrs = dict(trial.user_attrs)
        if stored:
            trial.set_user_attr(ATTR_INTERRUPTED, False)  # a retry inherits its original's attributes
        with _Heartbeat(trial, heartbeat_interval) if stored else contextlib.nullcontext():
            try:
                cfg = suggest_config(trial, study, spec)
            except ConfigError as e:
                run_id = _new_run(trial, None, attrs)
                _fail(trial, run_id, e, traceback.format_exc())
                raise
            run_id, out_dir = _resume_or_start(trial, cfg, attrs)
            return _train(trial, cfg, run_id, out_dir)

    def _new_run(trial: optuna.trial.BaseTrial, cfg: RunConfig | None, attrs: dict[str, Any]) -> str:
        from harness.train import resolve_device

        values = {k: trial.params[k] for k in spec.params if k in trial.params}
        tags = {
            TAG_KIND: "trial", TAG_STUDY: study.name, "harness.search_id": search_id,
            "optuna.study_name": study_name, "optuna.trial_number": str(trial.number), **env,
            **{f"axis.{k}": str(v) for k, v in values.items()},
        }
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        if cfg is not None:
            tags.update({TAG_HASH: config_hash(cfg), "harness.device": str(resolve_device(cfg.train.device))})
        if ATTR_RETRY_OF in attrs:
            tags["optuna.retry_of"] = str(attrs[ATTR_RETRY_OF])
        shown = {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in values.items()}  # short run names
        name = f"trial-{trial.number}|{run_name(shown)}"
        run_id = _mlflow(client.create_run, experiment_id, run_name=name, tags=tags).info.run_id
        trial.set_user_attr(ATTR_RUN_ID, run_id)
        return run_id

    def _resume_or_start(trial: optuna.trial.BaseTrial, cfg: RunConfig, attrs: dict[str, Any]) -> tuple[str, Path]:
        """A retried trial continues its original's checkpoint and MLflow run when they are here."""
        old_dir = Path(attrs[ATTR_OUT_DIR]) if ATTR_OUT_DIR in attrs else None
        if old_dir is not None and attrs.get(ATTR_RUN_ID) and (old_dir / "checkpoint").exists() and \
                attrs.get(ATTR_HASH) in (config_hash(cfg), legacy_hash(cfg)):
            run_id = attrs[ATTR_RUN_ID]
            _mlflow(client.update_run, run_id, status="RUNNING")
            _mlflow(client.set_tag, run_id, "optuna.trial_number", str(trial.number))
            _mlflow(client.set_tag, run_id, "optuna.retry_of", str(attrs.get(ATTR_RETRY_OF)))
            log.info("trial %d: resuming trial %s from %s", trial.number, attrs.get(ATTR_RETRY_OF), old_dir)
            return run_id, old_dir
        run_id = _new_run(trial, cfg, attrs)
        out_dir = Path(runs_root) / study.name / f"search-{search_id}" / f"trial-{trial.number:04d}"
        trial.set_user_attr(ATTR_OUT_DIR, str(out_dir))
        trial.set_user_attr(ATTR_HASH, config_hash(cfg))
        return run_id, out_dir

    def _train(trial: optuna.trial.BaseTrial, cfg: RunConfig, run_id: str, out_dir: Path) -> float:
        from harness.tracking import MlflowTracker
        from harness.train import TrainingDiverged, run_training

        tracker = MlflowTracker(client, run_id)
        reported: set[int] = set()

        def on_evaluate(step: int, dev: dict[str, float]) -> None:
            value = float(dev[metric])
            trial.report(value, step)
            reported.add(step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {metric} = {value:.4g}")

        log.info("trial %d: %s -> %s", trial.number, {k: trial.params[k] for k in spec.params}, out_dir)
        try:
            result = run_training(cfg, out_dir, tracker=tracker, progress=progress, on_evaluate=on_evaluate)
        except optuna.TrialPruned as e:
            _pruned(run_id, str(e), "pruner", max(reported, default=0))
            _drop_optimizer_state(out_dir)
            raise
        except TrainingDiverged as e:
            _pruned(run_id, str(e), "diverged", e.step)
            _drop_optimizer_state(out_dir)
            raise optuna.TrialPruned(f"diverged: {e}") from None
        except KeyboardInterrupt:
            if isinstance(trial, optuna.Trial):
                trial.set_user_attr(ATTR_INTERRUPTED, True)
            _mlflow(client.set_terminated, run_id, "KILLED")
            raise
        except Exception as e:
            _fail(trial, run_id, e, traceback.format_exc())
            raise
        value = float(result.metrics[metric])
        step = result.state.step
        if step not in reported:
            trial.report(value, step)  # the last point of the curve, for the plots
        if not math.isfinite(value):
            error = ValueError(f"final {metric} is {value}")
            _fail(trial, run_id, error, str(error))
            raise error
        _drop_optimizer_state(out_dir)
        if "emergence_step" in result.metrics:  # read by EmergenceAwarePruner
            trial.set_user_attr(ATTR_EMERGENCE, int(result.metrics["emergence_step"]))
        _mlflow(client.set_tag, run_id, "optuna.state", "COMPLETE")
        _mlflow(client.set_tag, run_id, "optuna.value", str(value))
        _mlflow(client.set_terminated, run_id, "FINISHED")
        return value

    def _pruned(run_id: str, message: str, reason: str, step: int) -> None:
        for key, value in {"harness.pruned": "true", "harness.pruned_reason": reason, "harness.pruned_step": str(step),
                           "harness.pruned_message": message[:5000], "optuna.state": "PRUNED"}.items():
            _mlflow(client.set_tag, run_id, key, value)
        _mlflow(client.set_terminated, run_id, "FINISHED")

    def _fail(trial: optuna.trial.BaseTrial, run_id: str, error: BaseException, tb: str) -> None:
        message = f"{type(error).__name__}: {error}"
        log.error("trial %d failed: %s", trial.number, message)
        trial.set_user_attr(ATTR_ERROR, message[:2000])
        with contextlib.suppress(Exception):
            _mlflow(client.log_text, run_id, tb, "error.txt")
        _mlflow(client.set_tag, run_id, "harness.error", message[:5000])
        _mlflow(client.set_tag, run_id, "optuna.state", "FAIL")
        _mlflow(client.set_terminated, run_id, "FAILED")

    return objective


def _drop_optimizer_state(out_dir: Path) -> None:
    """A finished trial is never resumed: drop its checkpoint's optimizer state (two thirds of it;
    many trials add up) and keep the weights, which ``harness eval`` can still load."""
    with contextlib.suppress(OSError):
        (out_dir / "checkpoint" / "state.pt").unlink()


class _Surplus(RuntimeError):
    """A trial that started after the study reached its total (two workers raced for the last one)."""


def _take_slot(trial: optuna.Trial, n_trials: int) -> bool:
    """Is this trial among the first ``n_trials`` that count? Decided by trial number, which the
    storage hands out atomically, so workers on different machines (which share no lock) agree."""
    before = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
    return sum(_claims_a_slot(t) for t in before) < n_trials


# --------------------------------------------------------------------------------------------
# Storage, stale trials, the worker loop


def resolve_storage(storage: str | None, *, workers: int = 1) -> str:
    """``None`` -> ``sqlite:///optuna.db`` for one worker, the journal file ``optuna-journal.log`` for
    several. A URL (``sqlite:///``, ``postgresql://``) is an RDB storage; anything else a journal file."""
    if storage is None:
        return DEFAULT_SQLITE if workers == 1 else DEFAULT_JOURNAL
    if storage.startswith("sqlite:") and workers > 1:
        raise ConfigError(
            f"--storage {storage}: SQLite is unsafe for {workers} parallel workers; use a journal file "
            f"(--storage {DEFAULT_JOURNAL}) on one machine or a PostgreSQL URL for many"
        )
    if "://" not in storage and storage.endswith((".db", ".sqlite", ".sqlite3")):
        raise ConfigError(f"--storage {storage}: looks like a SQLite file; write it as a URL, sqlite:///{storage}")
    return storage


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for :func:`resolve_storage`'s string."""
    if "://" in storage:
        kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite:") else {}
        return optuna.storages.RDBStorage(storage, engine_kwargs=kwargs)
    from optuna.storages.journal import JournalFileBackend

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


def _safe_url(storage: str) -> str:
    """The storage for display and tags, without a password."""
    if "://" in storage and "@" in storage:
        scheme, rest = storage.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return storage


def _requeue(study: optuna.Study, frozen: FrozenTrial) -> None:
    """Queue a copy of an unfinished trial (same parameters, attributes and reported values); the
    copy resumes the original's checkpoint. System attributes are copied so that e.g. the grid
    sampler keeps the trial's grid point."""
    attrs = {k: v for k, v in frozen.user_attrs.items() if k not in (ATTR_HEARTBEAT, ATTR_INTERRUPTED)}
    attrs[ATTR_RETRY_OF] = frozen.number
    attrs[ATTR_RETRIES] = int(frozen.user_attrs.get(ATTR_RETRIES, 0)) + 1
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs=attrs, system_attrs=dict(frozen.system_attrs), intermediate_values=frozen.intermediate_values,
        )
    )
    log.info("trial %d did not finish; queued again (retry %d)", frozen.number, attrs[ATTR_RETRIES])


def fail_stale_trials(study: optuna.Study, *, grace_period: float, client: Any | None = None) -> list[int]:
    """Fail RUNNING trials without a heartbeat for ``grace_period`` seconds (their worker died) and
    queue each again, up to :data:`MAX_RETRIES` times. Returns the failed trial numbers.

    Optuna's own heartbeat exists only for RDB storages; this one works with every storage.
    """
    now, failed = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = float(t.user_attrs.get(ATTR_HEARTBEAT, 0.0))
        started = t.datetime_start.timestamp() if t.datetime_start else 0.0
        if now - max(beat, started) < grace_period:
            continue
        give_up = int(t.user_attrs.get(ATTR_RETRIES, 0)) >= MAX_RETRIES
        try:
            if give_up:  # counted as a failure from now on: the search moves on to other parameters
                # (no public Optuna API sets an attribute on another worker's trial)
                study._storage.set_trial_user_attr(t._trial_id, ATTR_ERROR, f"its worker died {MAX_RETRIES + 1} times")
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):
            continue  # another worker failed it first (UpdateFinishedTrialError is a RuntimeError)
        log.warning("trial %d: no heartbeat for %.0f s, failed", t.number, now - max(beat, started))
        failed.append(t.number)
        if not give_up:
            _requeue(study, study.get_trials(deepcopy=False)[t.number])
        elif client is not None and t.user_attrs.get(ATTR_RUN_ID):
            with contextlib.suppress(Exception):
                _mlflow(client.set_terminated, t.user_attrs[ATTR_RUN_ID], "KILLED")
    return failed


def _requeue_interrupted(study: optuna.Study) -> None:
    """Trials stopped by Ctrl-C / SIGTERM are FAIL; queue each once more so that they resume."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(ATTR_RETRY_OF) for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get(ATTR_INTERRUPTED) and t.number not in retried:
            _requeue(study, t)


def _tally(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {
        "counted": sum(_counts(t) for t in trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL and _counts(t) for t in trials),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "waiting": sum(t.state == TrialState.WAITING for t in trials),
    }


def _work(
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
    lock = _creation_lock(study, storage)
    while True:
        fail_stale_trials(study, grace_period=grace_period, client=client)
        # Counting the trials and creating the next one happen under one lock, so that two workers
        # on this machine that finish together do not both start the last trial. The objective
        # releases the lock as soon as Optuna has created its trial; workers on other machines
        # can still race, and the loser steps aside (see ``_take_slot``).
        lock.acquire()
        try:
            n = _tally(study)
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


def _creation_lock(study: optuna.Study, storage: str) -> filelock.BaseFileLock:
    """A lock shared by this machine's workers of one study (any process, any runs folder)."""
    where = storage if "://" in storage else os.path.abspath(storage)
    key = hashlib.sha1(f"{where}\0{study.study_name}".encode()).hexdigest()[:16]
    return filelock.FileLock(Path(tempfile.gettempdir()) / f"harness-optuna-{key}.lock", thread_local=False)


# --------------------------------------------------------------------------------------------
# The search


def _load_or_create_study(
    storage: str, study_name: str, spec: SearchSpec, *, worker: int = 0, where: SourceMap | None = None
) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=open_storage(storage), study_name=study_name, direction=spec.direction,
            sampler=spec.make_sampler(worker=worker), pruner=spec.make_pruner(), load_if_exists=True,
        )
    metric = study.user_attrs.get(ATTR_METRIC)
    if study.direction.name.lower() != spec.direction or (metric is not None and metric != spec.metric):
        at = where("search.objective") if where else ""
        raise ConfigError(
            f"{at}search.objective: Optuna study {study_name!r} in {_safe_url(storage)} was created for "
            f"{study.direction.name.lower()} {metric}; the study file says {spec.direction} {spec.metric}. "
            f"Use --study-name for a new search"
        )
    return study


def _parent_run(client: Any, experiment_id: str, study: Study, spec: SearchSpec, optuna_study: optuna.Study,
                search_id: str, storage: str) -> str:
    runs = _mlflow(
        client.search_runs, [experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = 'search' and tags.`harness.search_id` = '{search_id}'", max_results=1,
    )
    tags = {**spec.describe(), "optuna.storage": _safe_url(storage)}
    if runs:
        run_id = runs[0].info.run_id
        _mlflow(client.update_run, run_id, status="RUNNING")
    else:
        run = _mlflow(
            client.create_run, experiment_id, run_name=f"search:{optuna_study.study_name}",
            tags={TAG_KIND: "search", TAG_STUDY: study.name, "harness.search_id": search_id,
                  "optuna.study_name": optuna_study.study_name},
        )
        run_id = run.info.run_id
    for key, value in tags.items():
        _mlflow(client.set_tag, run_id, key, value)
    _mlflow(client.log_text, run_id, study.path.read_text(), "study.yaml")
    return run_id


def run_search(
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
) -> optuna.Study:
    """Run (or continue) the study's search until its storage holds ``n_trials`` finished trials.

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
    if workers < 1:
        raise ConfigError(f"--workers: expected >= 1, got {workers}")
    _, where = read_yaml(study.path)
    spec = load_search(study)
    total = n_trials if n_trials is not None else spec.n_trials
    if total is None and spec.sampler == "grid":
        total = math.prod(len(v) for v in spec.grid().values())
    timeout = timeout if timeout is not None else spec.timeout
    if total is None and timeout is None:
        raise ConfigError(f"{where('search')}search: set n_trials or timeout (or pass --n-trials), or the search never ends")
    explicit = storage is not None
    storage = resolve_storage(storage, workers=workers)
    _check_default_storages(storage, study_name or study.name, explicit=explicit)
    grace = grace_period if grace_period is not None else 4 * heartbeat_interval
    deadline = time.time() + timeout if timeout is not None else None

    optuna_study = _load_or_create_study(storage, study_name or study.name, spec, where=where)
    search_id = optuna_study.user_attrs.get(ATTR_SEARCH_ID)
    if search_id is None:  # a new study: name its outputs and run its enqueued trials first
        search_id = uuid.uuid4().hex[:8]
        optuna_study.set_user_attr(ATTR_SEARCH_ID, search_id)
        optuna_study.set_user_attr(ATTR_METRIC, spec.metric)
        for params in spec.enqueue:
            optuna_study.enqueue_trial(params)
    _requeue_interrupted(optuna_study)

    client = make_client(tracking_uri)
    experiment = client.get_experiment_by_name(study.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(study.experiment)
    parent = _parent_run(client, experiment_id, study, spec, optuna_study, search_id, storage)
    log.info("search %s (%s): %s trials, storage %s, MLflow parent run %s", optuna_study.study_name, search_id,
             total if total is not None else "unlimited", _safe_url(storage), parent)
    job = _WorkerJob(
        study=study, spec=spec, storage=storage, study_name=optuna_study.study_name, search_id=search_id,
        n_trials=total, deadline=deadline, tracking_uri=tracking_uri, runs_root=str(runs_root),
        parent_run_id=parent, experiment_id=experiment_id, heartbeat_interval=heartbeat_interval,
        grace_period=grace, progress=progress and workers == 1, threads=None,
    )
    status = "FINISHED"
    try:
        if workers == 1:
            job.run(optuna_study=optuna_study, client=client)
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
            _summarise(optuna_study, spec, client, parent, status)
        except Exception:
            if status == "FINISHED":
                raise
            log.exception("could not summarise the search on its parent run")  # keep the first error
    return optuna_study


def _check_default_storages(storage: str, study_name: str, *, explicit: bool) -> None:
    """Refuse to silently start over: the default storage depends on the number of workers."""
    if explicit:
        return
    other = DEFAULT_JOURNAL if storage == DEFAULT_SQLITE else DEFAULT_SQLITE
    other_path = other.removeprefix("sqlite:///")
    if not Path(other_path).exists():
        return
    try:
        names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(other), include_best_trial=False)}
    except Exception:  # noqa: BLE001 - an unreadable file is not ours to judge here
        return
    if study_name in names:
        raise ConfigError(
            f"Optuna study {study_name!r} is in {other} (another number of workers used another default storage); "
            f"pass --storage {other} to continue it, or --study-name for a new search"
        )


@dataclass
class _WorkerJob:
    """Everything a worker process needs (picklable for multiprocessing's spawn)."""

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
        optuna_study = optuna_study or _load_or_create_study(self.storage, self.study_name, self.spec, worker=self.worker)
        client = client or make_client(self.tracking_uri)
        objective = make_objective(
            self.study, client=client, parent_run_id=self.parent_run_id, experiment_id=self.experiment_id,
            runs_root=self.runs_root, spec=self.spec, study_name=self.study_name, search_id=self.search_id,
            n_trials=self.n_trials, heartbeat_interval=self.heartbeat_interval, progress=self.progress,
        )
        _work(optuna_study, objective, n_trials=self.n_trials, deadline=self.deadline, grace_period=self.grace_period,
              poll=min(5.0, self.heartbeat_interval), storage=self.storage, client=client)


def _worker_main(job: _WorkerJob) -> None:
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


def _run_workers(job: _WorkerJob, workers: int) -> None:
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


# --------------------------------------------------------------------------------------------
# The end: best trial and plots on the parent run


def _summarise(optuna_study: optuna.Study, spec: SearchSpec, client: Any, parent: str, status: str) -> None:
    from mlflow.entities import Metric

    n = _tally(optuna_study)
    step = n["counted"]
    now = int(time.time() * 1000)
    metrics = [Metric(f"search/{k}", float(v), now, step) for k, v in n.items() if k not in ("running", "waiting")]
    try:
        best = optuna_study.best_trial
    except ValueError:
        best = None  # no complete trial yet
    if best is not None:
        metrics += [Metric(f"best/{spec.metric}", float(best.value), now, step),
                    Metric("best/trial_number", float(best.number), now, step)]
        tags = {"best.trial_number": str(best.number), "best.value": repr(best.value),
                "best.mlflow_run_id": str(best.user_attrs.get(ATTR_RUN_ID, "")),
                **{f"best.{k}": repr(v) for k, v in best.params.items()}}
        for key, value in tags.items():
            _mlflow(client.set_tag, parent, key, value)
        best_json = {"number": best.number, "value": best.value, "params": best.params,
                     "mlflow_run_id": best.user_attrs.get(ATTR_RUN_ID)}
        _mlflow(client.log_text, parent, json.dumps(best_json, indent=2), "best_trial.json")
        log.info("best trial %d: %s = %.4g with %s", best.number, spec.metric, best.value, best.params)
    _mlflow(client.log_batch, parent, metrics=metrics)
    with contextlib.suppress(Exception):
        _log_plots(optuna_study, spec, client, parent)
    if best is None and status == "FINISHED":
        status = "FAILED"
    _mlflow(client.set_terminated, parent, status)


def write_plots(optuna_study: optuna.Study, path: str | Path, *, metric: str = "objective") -> list[str]:
    """Write Optuna's plots (optimization history, parameter importances, parallel coordinates,
    intermediate values) into one self-contained HTML file; returns the titles of those drawn.

    One file embeds plotly.js once (about 4.6 MB) and opens offline, also inside the MLflow UI.

    Example::

        >>> write_plots(optuna.load_study(study_name="quick", storage="sqlite:///optuna.db"), "plots.html")  # doctest: +SKIP
        ['optimization history', 'parameter importances', 'parallel coordinates', 'intermediate values']
    """
    import optuna.visualization as vis

    plots = [
        ("optimization history", lambda: vis.plot_optimization_history(optuna_study, target_name=metric)),
        ("parameter importances", lambda: vis.plot_param_importances(optuna_study, target_name=metric)),
        ("parallel coordinates", lambda: vis.plot_parallel_coordinate(optuna_study, target_name=metric)),
        ("intermediate values", lambda: vis.plot_intermediate_values(optuna_study)),
    ]
    parts, drawn = [], []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "too few trials" notes: the page says what is missing
    try:
        for title, make in plots:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fig = make()
            except Exception as e:  # noqa: BLE001 - e.g. importances need two complete trials
                parts.append(f"<h2>{html.escape(title)}</h2><p>not drawn: {html.escape(str(e))}</p>")
                continue
            parts.append(f"<h2>{html.escape(title)}</h2>" + fig.to_html(full_html=False, include_plotlyjs=not drawn))
            drawn.append(title)
    finally:
        optuna.logging.set_verbosity(verbosity)
    name = html.escape(optuna_study.study_name)
    Path(path).write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title></head>"
        f"<body><h1>Optuna study {name}</h1>{''.join(parts)}</body></html>"
    )
    return drawn


def _log_plots(optuna_study: optuna.Study, spec: SearchSpec, client: Any, parent: str) -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        log.warning("plotly is not installed: no Optuna plots (pip install plotly)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optuna_plots.html"
        write_plots(optuna_study, path, metric=spec.metric)
        _mlflow(client.log_artifact, parent, str(path), "plots")
