"""Studies: an ablation grid over run configurations, tracked in MLflow.

A study file holds values only::

    name: quickstart
    base:                      # a run configuration (any section of RunConfig)
      train: {max_steps: 300}
    axes:                      # full product over these config fields
      encoder.name: [pack:whisper-tiny.en, pack:whisper-base]
      adapter.k: [5, 10]
    zip:                       # groups of fields that move together (lists of equal length)
      - llm.name: [pack:smollm2-135m-instruct, pack:gemma3-270m]
        llm.prompt_style: [chat, plain]
    exclude:                   # drop cells matching every key/value of an entry
      - {encoder.name: pack:whisper-base, adapter.k: 10}
    include:                   # extra cells: base + these values
      - {adapter.projector: qformer}

Every cell is validated into a :class:`RunConfig` before anything runs; errors name the study
file, the line and the valid choices. A cell's identity is the hash of its resolved config.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import (
    ConfigError,
    RunConfig,
    SourceMap,
    build_config,
    config_hash,
    get_path,
    read_yaml,
    set_path,
)

_STUDY_KEYS = ("name", "description", "base", "axes", "zip", "include", "exclude", "tracking", "search")


@dataclass(frozen=True)
class Cell:
    """One run of a study: its axis values, its resolved config and its identity."""

    values: dict[str, Any]  # axis key -> value (only the keys the study varies)
    config: RunConfig
    hash: str
    name: str = ""  # the MLflow run name (see :func:`run_name`)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", run_name(self.values))


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    description: str
    base: dict[str, Any]
    axis_keys: tuple[str, ...]
    cells: tuple[Cell, ...]
    experiment: str
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


def _short(key: str, value: Any) -> str:
    """Readable label of one axis value for run names."""
    leaf = key.split(".")[-1]
    if key in ("encoder.name", "llm.name") and isinstance(value, str):
        return value.split(":", 1)[-1].rstrip("/").split("/")[-1]
    if key == "adapter.k":
        return f"k{value}"
    if key == "encoder.trainable":
        return "trainable" if value else "frozen"
    if key == "llm.lora.enabled":
        return "lora" if value else "no-lora"
    if key in ("adapter.projector", "llm.prompt_style", "encoder.input_mode", "llm.casing"):
        return str(value)
    if value == "":
        return f"{leaf}=''"
    if isinstance(value, str) and "/" in value:  # a path: its folder and file name say enough
        return f"{leaf}={_short_path(value)}"
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):  # e.g. data.test
        return f"{leaf}=" + ",".join(f"{k}:{_short_path(v)}" for k, v in value.items())
    return f"{leaf}={value}"


def _short_path(value: str) -> str:
    path = Path(value)
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def run_name(values: dict[str, Any]) -> str:
    """``whisper-tiny.en|smollm2-135m-instruct|linear|k5|frozen`` from the axis values."""
    return "|".join(_short(k, v) for k, v in values.items()) or "base"


def _check_mapping(obj: Any, what: str, where: SourceMap, key: str) -> dict:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where(key)}{what}: expected a mapping, got {type(obj).__name__}")
    return obj


def _check_list(obj: Any, what: str, where: SourceMap, key: str) -> list:
    if not isinstance(obj, list) or not obj:
        raise ConfigError(f"{where(key)}{what}: expected a non-empty list of values, got {obj!r}")
    return obj


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Read, expand and validate a study file (``overrides`` apply ``a.b=v`` to its base config)."""
    from harness.config import parse_override

    path = Path(path)
    raw, where = read_yaml(path)
    raw = _check_mapping(raw or {}, "study file", where, "")
    for key in raw:
        if key not in _STUDY_KEYS:
            import difflib

            close = difflib.get_close_matches(str(key), _STUDY_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where(str(key))}unknown study key {key!r}{hint}. Valid keys: {', '.join(_STUDY_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where('name')}name: expected the study's name (a non-empty string)")
    base = _check_mapping(raw.get("base") or {}, "base", where, "base")
    for text in overrides:
        k, v = parse_override(text)
        set_path(base, k, v)

    # Each group is a list of assignments (dicts key->value) that get combined by product.
    groups: list[list[dict[str, Any]]] = []
    axis_keys: list[str] = []
    axes = _check_mapping(raw.get("axes") or {}, "axes", where, "axes")
    for key, values in axes.items():
        values = _check_list(values, f"axes.{key}", where, f"axes.{key}")
        groups.append([{key: v} for v in values])
        axis_keys.append(key)
    for gi, group in enumerate(raw.get("zip") or []):
        group = _check_mapping(group, f"zip[{gi}]", where, f"zip[{gi}]")
        lists = {k: _check_list(v, f"zip[{gi}].{k}", where, f"zip[{gi}].{k}") for k, v in group.items()}
        lengths = {k: len(v) for k, v in lists.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{where(f'zip[{gi}]')}zip[{gi}]: lists must have equal lengths, got {lengths}")
        n = next(iter(lengths.values()))
        groups.append([{k: lists[k][i] for k in lists} for i in range(n)])
        axis_keys.extend(lists)
    dup = {k for k in axis_keys if axis_keys.count(k) > 1}
    if dup:
        raise ConfigError(f"{where('axes')}{sorted(dup)} appear in more than one axis or zip group")

    assignments = [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*groups)]
    excludes = raw.get("exclude") or []
    for i, ex in enumerate(excludes):
        _check_mapping(ex, f"exclude[{i}]", where, f"exclude[{i}]")
    assignments = [a for a in assignments if not any(all(a.get(k) == v for k, v in ex.items()) for ex in excludes)]
    product_keys = set(axis_keys)
    base_cfg = build_config(_deep_copy(base), where=_cell_where(where, {}))
    for i, inc in enumerate(raw.get("include") or []):
        inc = _check_mapping(inc, f"include[{i}]", where, f"include[{i}]")
        assignments.append(dict(inc))
        axis_keys.extend(k for k in inc if k not in axis_keys)

    base_values = {k: get_path(base_cfg, k) for k in axis_keys}
    cells, seen = [], {}
    for values in assignments:
        cell_where = _cell_where(where, values)
        data = _deep_copy(base)
        for k, v in values.items():
            set_path(data, k, v)
        cfg = build_config(data, where=cell_where)
        _check_references(cfg, cell_where)
        h = config_hash(cfg)
        ordered = {k: get_path(cfg, k) for k in axis_keys}  # every axis, also those an include leaves at base
        if h in seen:
            continue  # an include that repeats a product cell is the same run
        seen[h] = True
        # Named by every product axis, plus the include-only keys where the cell leaves the base value:
        # a one-factor-at-a-time study reads "lora", "lr=0.003", "base" rather than every key of every include.
        shown = {k: v for k, v in ordered.items() if k in product_keys or v != base_values[k]}
        cells.append(Cell(ordered, cfg, h, run_name(shown)))
    tracking = _check_mapping(raw.get("tracking") or {}, "tracking", where, "tracking")
    return Study(
        name=name, path=path, description=str(raw.get("description", "")), base=base,
        axis_keys=tuple(axis_keys), cells=tuple(cells), experiment=str(tracking.get("experiment", name)), raw=raw,
    )


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def _cell_where(where: SourceMap, values: dict[str, Any]) -> SourceMap:
    """Map a config key to the study-file line that set it: an axis entry or the base section."""
    lines = dict(where.lines)
    for key in values:
        for prefix in ("axes.", "zip[", "include["):
            hits = [ln for k, ln in where.lines.items() if k.startswith(prefix) and k.endswith(key)]
            if hits:
                lines[key] = min(hits)
                break
    for k, ln in where.lines.items():
        if k.startswith("base."):
            lines.setdefault(k[len("base.") :], ln)
    return SourceMap(where.path, lines)


def _check_references(cfg: RunConfig, where: SourceMap) -> None:
    from harness.models import PROJECTORS, check_reference
    from harness.models.loading import ModelLoadError
    from harness.registry import RegistryError

    checks = [
        ("encoder.name", lambda: check_reference(cfg.encoder.name, kind="encoder")),
        ("llm.name", lambda: check_reference(cfg.llm.name, kind="llm")),
        ("adapter.projector", lambda: PROJECTORS.get(cfg.adapter.projector)),
    ]
    for key, check in checks:
        try:
            check()
        except (ModelLoadError, RegistryError) as e:
            raise ConfigError(f"{where(key)}{key}: {e}") from None
