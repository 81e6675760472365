"""Plain mappings (YAML, overrides) -> the typed :class:`~harness.config.RunConfig`, and back.

Each value is checked against its field's annotation and returned in canonical form (lists become
tuples, mappings become :class:`~harness.config.run.FrozenDict`, ints become floats for a float
setting); an unknown key names the closest valid one.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.config.errors import ConfigError, show
from harness.registry import did_you_mean
from harness.config.keys import set_path
from harness.config.run import MOVED, FrozenDict, RunConfig, validate
from harness.config.yamlfile import SourceMap, parse_override, read_yaml

log = logging.getLogger("harness.config")
_WARNED: set[str] = set()

# --------------------------------------------------------------------------------------------
# dict -> dataclass with type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    return getattr(tp, "__name__", str(tp))



_INT_LIMIT = 2**63


def _check_finite(tp: Any, value: Any, key: str, where: typing.Callable[[str], str]) -> None:
    """Every float setting is finite: ``inf`` passes ``> 0`` and ``nan`` passes every ``not <`` check."""
    try:
        finite = isinstance(value, bool) or not isinstance(value, (int, float)) or math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise ConfigError(f"{where(key)}{key}: expected a finite {_type_name(tp)}, got {show(value)}")


def coerce_value(tp: Any, value: Any, key: str, where: typing.Callable[[str], str]) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form (or raise);
    errors name ``key`` after ``where(key)`` (e.g. ``"study.yaml:7: "``)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where(key)}{key}: expected {_type_name(tp)}, got {show(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _from_dict(tp, value, key, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        if float in args:
            _check_finite(tp, value, key, where)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(arg, value, key, where)
            except ConfigError:
                continue
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)[:1]
        return tuple(coerce_value(item, v, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, vt = typing.get_args(tp)
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(
                    f"{where(key)}{key}: expected {_type_name(tp)} with string keys, got the key {show(k)}")
        return FrozenDict({k: coerce_value(vt, v, f"{key}.{k}", where) for k, v in value.items()})
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise ConfigError(f"{where(key)}{key}: expected int within +-2**63, got {show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        _check_finite(tp, value, key, where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")  # a bug in this file, not in the input


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(path: str, names: list[str], section: str, at: str) -> ConfigError:
    if path in MOVED:
        return ConfigError(f"{at}{path}: this key moved to {MOVED[path]!r} (the option belongs to one family)")
    hint = did_you_mean(path.rsplit(".", 1)[-1], names)
    return ConfigError(f"{at}unknown key {path!r}{hint}. Valid keys of {section}: {', '.join(names)}")


def _read_moved(data: dict, prefix: str, where: typing.Callable[[str], str]) -> dict:
    """``data`` with the old spelling of an option that moved into its family's section
    (:data:`~harness.config.run.MOVED`, e.g. ``encoder: {input_mode: pad30}``) read at its new place,
    with one warning; so study files and run folders written before keep loading. Giving both the
    old and the new key is an error."""
    out = dict(data)
    for key in data:
        path = f"{prefix}.{key}" if prefix else str(key)
        if path not in MOVED:
            continue
        family, leaf = MOVED[path][len(prefix) + 1:].split(".")
        section = out.get(family, {})
        if not isinstance(section, dict):
            continue  # the section's own type error names it
        if leaf in section:
            raise ConfigError(f"{where(path)}{path}: the old spelling of {MOVED[path]}, which is also given; keep only {MOVED[path]}")
        out[family] = {**section, leaf: out.pop(key)}
        note = f"{where(path)}{path} is the old spelling of {MOVED[path]}; read as {MOVED[path]}"
        if note not in _WARNED:
            _WARNED.add(note)
            log.warning(note)
    return out


def _from_dict(cls: type, data: dict, prefix: str, where: typing.Callable[[str], str]) -> Any:
    data = _read_moved(data, prefix, where)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise _unknown_key(path, names, prefix or "the run config", where(path))
        kwargs[key] = coerce_value(hints[key], value, path, where)
    return cls(**kwargs)


def setting_type(key: Any, at: str = "") -> Any:
    """The annotation of the setting ``key`` (``"adapter.k"`` -> ``int``); a key inside a mapping
    setting (``"data.test.ls"``) is allowed. Anything else is a :class:`ConfigError` that starts with
    ``at`` (e.g. ``"study.yaml:7: "``) and names the closest valid key."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{at}expected a setting such as 'adapter.k' (a string), got {show(key)}")
    tp: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                raise _unknown_key(".".join(parts[: i + 1]), names, ".".join(parts[:i]) or "the run config", at)
            tp = _hints(tp)[part]
        elif typing.get_origin(tp) is dict and part:
            tp = typing.get_args(tp)[1]
        else:
            raise ConfigError(f"{at}{key}: {'.'.join(parts[:i])!r} is a setting ({_type_name(tp)}), not a section")
    if dataclasses.is_dataclass(tp):
        names = ", ".join(f.name for f in dataclasses.fields(tp))
        raise ConfigError(f"{at}{key}: expected a setting, got the section {key!r} (its keys: {names})")
    return tp


def coerce_setting(key: str, value: Any, at: str = "") -> Any:
    """``value`` checked against the type of setting ``key`` and in canonical form (``1`` -> ``1.0``
    for a float setting, lists -> tuples); errors start with ``at``."""
    return coerce_value(setting_type(key, at), value, key, lambda _key: at)


def build_config(data: dict | None = None, *, where: typing.Callable[[str], str] | None = None) -> RunConfig:
    """Validate a plain mapping (as read from YAML) into a :class:`RunConfig`."""
    where = where or SourceMap()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where('')}expected a mapping of sections (data, encoder, adapter, llm, train, decode), "
                          f"got {type(data).__name__}")
    cfg = _from_dict(RunConfig, data, "", where)
    validate(cfg, where)
    return cfg


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a run config from YAML (or start from defaults) and apply ``a.b=v`` overrides."""
    data, where = read_yaml(path) if path is not None else ({}, SourceMap())
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where('')}expected a mapping of sections (data, encoder, adapter, llm, train, decode), "
                          f"got {type(data).__name__}")
    for text in overrides:
        key, value = parse_override(text)
        set_path(data, key, value)
        where.overrides[key] = text
    return build_config(data, where=where)


def to_dict(cfg: Any) -> dict:
    """Plain, JSON-ready mapping (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))



def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(cfg: Any) -> dict[str, Any]:
    """``{"train.lr": 0.001, ...}``: the flat form logged as parameters."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and v and k not in ("test", "optional_test"):
                walk(v, key)
            else:
                out[key] = json.dumps(v) if isinstance(v, (dict, list)) else v
        return None

    walk(to_dict(cfg), "")
    return out
