"""The ``search:`` section of a study file, validated into a :class:`SearchSpec`, and a trial's config from it."""
from __future__ import annotations


import builtins
import copy
import inspect
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from harness.config import ConfigError, RunConfig, SourceMap, build_config, coerce_value, read_yaml, set_path
from harness.experiments.study import Study, check_references
from harness.experiments.search.pruner import EmergenceAwarePruner
from harness.registry import Registry, did_you_mean

log = logging.getLogger("harness.search")


METRICS = {"dev/wer": "minimize", "dev/loss": "minimize", "dev/acc": "maximize"}
"""Objective metrics (those reported after each evaluation) and their natural direction."""


_SEARCH_KEYS = ("params", "objective", "n_trials", "timeout", "seed", "sampler", "pruner", "enqueue")


_PARAM_KEYS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "step", "log"),
    "categorical": ("type", "choices"),
}


_SAMPLERS: Registry[Callable[[], type]] = Registry("sampler")  # name -> the class (imported when used)
_SAMPLERS.add("tpe", lambda: optuna.samplers.TPESampler)
_SAMPLERS.add("random", lambda: optuna.samplers.RandomSampler)
_SAMPLERS.add("grid", lambda: optuna.samplers.GridSampler)
_PRUNERS: Registry[Callable[[], type]] = Registry("pruner")
_PRUNERS.add("median", lambda: optuna.pruners.MedianPruner)
_PRUNERS.add("successive_halving", lambda: optuna.pruners.SuccessiveHalvingPruner)
_PRUNERS.add("hyperband", lambda: optuna.pruners.HyperbandPruner)
_PRUNERS.add("none", lambda: optuna.pruners.NopPruner)


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
        raise ConfigError(f"{where('')}study {study.name!r} has no 'search:' section (see harness/experiments/search/__init__.py for its keys)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where('search')}search: expected a mapping with keys {', '.join(_SEARCH_KEYS)}")
    for key in ("axes", "zip", "include", "exclude"):
        if study.raw.get(key):
            raise ConfigError(
                f"{where(key)}{key}: a search varies its parameters under search.params; "
                f"write a grid as categorical params with 'sampler: grid', or run the grid with 'harness study run'"
            )
    _unknown(raw, _SEARCH_KEYS, "search", where)

    metric, direction = _load_objective(raw.get("objective", "dev/wer"), where)

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
        _check_grid(spec, where)
    enqueue = _load_enqueue(raw.get("enqueue"), params, where)
    return SearchSpec(**{**spec.__dict__, "enqueue": enqueue})


def _load_objective(objective: Any, where: SourceMap) -> tuple[str, str]:
    """``"dev/wer"`` or ``"minimize dev/wer"`` -> (metric, direction)."""
    words = objective.split() if isinstance(objective, str) else []
    metric = words[-1] if words else None
    direction = words[0] if len(words) == 2 else METRICS.get(metric or "", "")
    if metric not in METRICS or len(words) not in (1, 2) or direction not in ("minimize", "maximize"):
        raise ConfigError(
            f"{where('search.objective')}search.objective: expected '[minimize|maximize] METRIC' with METRIC one of "
            f"{', '.join(METRICS)}, got {objective!r}"
        )
    return metric, direction


def _check_grid(spec: SearchSpec, where: SourceMap) -> None:
    """The grid sampler needs finite values, and no more trials than grid points."""
    for key, dist in spec.params.items():
        try:
            _finite_values(key, dist)
        except ValueError:
            raise ConfigError(
                f"{where('search.params.' + key)}search.params.{key}: the grid sampler needs finite values; "
                f"give it a step or make it categorical"
            ) from None
    size = math.prod(len(v) for v in spec.grid().values())
    if spec.n_trials is not None and spec.n_trials > size:
        raise ConfigError(f"{where('search.n_trials')}search.n_trials: {spec.n_trials} exceeds the grid's {size} points")


def _unknown(mapping: Mapping, valid: tuple[str, ...], what: str, where: SourceMap) -> None:
    for key in mapping:
        if key not in valid:
            hint = did_you_mean(key, valid)
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
    raw: Any, what: str, registry: Registry[Callable[[], type]], where: SourceMap, *, skip: tuple[str, ...]
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
