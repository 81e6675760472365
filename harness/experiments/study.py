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
Keys of ``axes``, ``zip`` and ``include`` must be settings of the run config; keys of ``exclude``
must be axis or zip keys, its values are compared as typed config values, and an entry that
matches no cell is an error. The study's ``name`` (and ``tracking.experiment``) is letters,
digits and ``_ . + -``: it becomes a folder and a quoted MLflow filter value.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import (
    ConfigError,
    RunConfig,
    SourceMap,
    build_config,
    coerce_setting,
    config_hash,
    execution_dict,
    get_path,
    legacy_hashes,
    parse_override,
    read_yaml,
    set_path,
    setting_type,
    show,
)
from harness.experiments.findings import Finding, parse_findings
from harness.registry import did_you_mean

_STUDY_KEYS = ("name", "description", "base", "axes", "zip", "include", "exclude", "seeds", "findings", "tracking",
               "search")
REPLICATE_KEY = "train.seed"  # the axis ``seeds`` writes: replicates of one arm, not a factor
_TRACKING_KEYS = ("experiment",)
# A study's name (and its MLflow experiment) becomes a folder under the runs root and a quoted
# string in MLflow search filters: no separators, no quotes, no leading dot.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
_NAME_RULE = "letters, digits and _ . + - (at most 100, the first a letter or digit)"

# One choice of values for a cell: config key -> (value, the study-file key that wrote it).
Choice = dict[str, tuple[Any, str]]


@dataclass(frozen=True)
class Cell:
    """One run of a study: its axis values, its resolved config and its identity."""

    values: dict[str, Any]  # axis key -> value (only the keys the study varies)
    config: RunConfig
    hash: str
    name: str = ""  # the MLflow run name (see :func:`run_name`)
    legacy_hashes: dict[int, str] = field(default_factory=dict)  # version -> identity older stores knew it by (:func:`harness.config.legacy_hashes`)

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
    seeds: tuple[int, ...] = ()
    """The ``seeds`` section: every cell of the grid runs once per seed (the ``train.seed`` axis)."""
    findings: tuple[Finding, ...] = ()
    """The claims the study tests (see :mod:`harness.experiments.findings`)."""

    @property
    def factor_keys(self) -> tuple[str, ...]:
        """The axes that are factors: every axis but the replicate seed."""
        return tuple(k for k in self.axis_keys if k != REPLICATE_KEY)


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
    if key in ("adapter.projector", "llm.prompt_style", "encoder.whisper.input_mode", "llm.casing"):
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
        raise ConfigError(f"{where(key)}{what}: expected a non-empty list of values, got {show(obj)}")
    return obj


def _section(raw: dict, key: str, where: SourceMap) -> dict:
    """A mapping section of the study file (absent or empty: ``{}``; a list, a number... is an error)."""
    value = raw.get(key)
    return {} if value is None else _check_mapping(value, key, where, key)


def _entries(raw: dict, key: str, where: SourceMap) -> list[dict]:
    """A list-of-mappings section (``zip``, ``include``, ``exclude``)."""
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where(key)}{key}: expected a list of mappings (each line '- {{key: value, ...}}'), "
                          f"got {type(value).__name__}")
    return [_check_mapping(entry, f"{key}[{i}]", where, f"{key}[{i}]") for i, entry in enumerate(value)]


def _unknown(mapping: dict, valid: tuple[str, ...], what: str, where: SourceMap, prefix: str = "") -> None:
    for key in mapping:
        if key not in valid:
            hint = did_you_mean(key, valid)
            raise ConfigError(
                f"{where(prefix + str(key))}unknown {what} key {key!r}{hint}. Valid keys: {', '.join(valid)}")


def _check_name(value: Any, what: str, where: SourceMap) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"{where(what)}{what}: expected {_NAME_RULE}, got {show(value)}")
    return value


def _read_study(path: Path, overrides: list[str] | tuple[str, ...]) -> tuple[dict, dict, SourceMap]:
    """The study file as a checked mapping and its base section, with ``overrides`` applied to the base."""
    raw, where = read_yaml(path)
    raw = _check_mapping({} if raw is None else raw, "study file", where, "")
    _unknown(raw, _STUDY_KEYS, "study", where)
    base = _section(raw, "base", where)
    for text in overrides:
        key, value = parse_override(text)
        set_path(base, key, value)
        where.overrides[f"base.{key}"] = text  # errors in this value blame the override, not the file
    return raw, base, where


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    """Read, expand and validate a study file (``overrides`` apply ``a.b=v`` to its base config)."""
    path = Path(path)
    raw, base, where = _read_study(path, overrides)
    name = _check_name(raw.get("name"), "name", where)
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"{where('description')}description: expected a string, got {show(description)}")
    tracking = _section(raw, "tracking", where)
    _unknown(tracking, _TRACKING_KEYS, "tracking", where, "tracking.")
    experiment = tracking.get("experiment")
    experiment = name if experiment is None else _check_name(experiment, "tracking.experiment", where)
    base_cfg = build_config(_deep_copy(base), where=_cell_where(where, {}))

    groups, product_keys = _groups(raw, where)
    seeds = _seeds(raw, where, product_keys)
    if seeds:
        groups.append([{REPLICATE_KEY: (s, f"seeds[{i}]")} for i, s in enumerate(seeds)])
        product_keys.append(REPLICATE_KEY)
    _check_overrides(where, product_keys)
    product = [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*groups)]
    product = _drop_excluded(product, raw, where, product_keys)
    includes = _includes(raw, where)
    if seeds:  # an include is a cell like any other: it runs once per seed too
        includes = [{**inc, REPLICATE_KEY: (s, f"seeds[{i}]")} for inc in includes for i, s in enumerate(seeds)]
    axis_keys = list(dict.fromkeys([*product_keys, *(k for inc in includes for k in inc)]))
    if seeds:  # the replicate last: run names read "k5|frozen|seed=2"
        axis_keys = [k for k in axis_keys if k != REPLICATE_KEY] + [REPLICATE_KEY]
    cells = _cells([*product, *includes], base, base_cfg, axis_keys, set(product_keys), where)
    axis_values = {k: list(dict.fromkeys(c.values[k] for c in cells)) for k in axis_keys}
    return Study(
        name=name, path=path, description=description or "", base=base,
        axis_keys=tuple(axis_keys), cells=tuple(cells), experiment=experiment, raw=raw,
        seeds=tuple(seeds), findings=parse_findings(raw.get("findings"), where, axis_values),
    )


def _seeds(raw: dict, where: SourceMap, product_keys: list[str]) -> list[int]:
    """The ``seeds`` section: distinct non-negative integers; then ``train.seed`` is no axis of its own."""
    if raw.get("seeds") is None:
        return []
    seeds = _check_list(raw["seeds"], "seeds", where, "seeds")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{where(f'seeds[{i}]')}seeds[{i}]: expected a non-negative integer seed, got {show(s)}")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"{where('seeds')}seeds: {show(seeds)} repeats a seed; a replicate is one seed")
    clash = [k for k in product_keys if k == REPLICATE_KEY]
    inc = [k for i, e in enumerate(_entries(raw, "include", where)) for k in e if k == REPLICATE_KEY]
    if clash or inc:
        raise ConfigError(f"{where('seeds')}seeds: {REPLICATE_KEY} is also set by axes, zip or include; "
                          "give the replicate seeds in one place")
    return seeds


def _groups(raw: dict, where: SourceMap) -> tuple[list[list[Choice]], list[str]]:
    """The product's factors: one group per axis, one per zip entry (its lists move together)."""
    groups: list[list[Choice]] = []
    keys: list[str] = []
    for key, values in _section(raw, "axes", where).items():
        at = f"axes.{key}"
        setting_type(key, where(at))
        values = _check_list(values, at, where, at)
        groups.append([{key: (v, f"{at}[{i}]")} for i, v in enumerate(values)])
        keys.append(key)
    for gi, group in enumerate(_entries(raw, "zip", where)):
        at = f"zip[{gi}]"
        if not group:
            raise ConfigError(f"{where(at)}{at}: expected settings with lists of values, got an empty mapping")
        lists = {}
        for k, v in group.items():
            setting_type(k, where(f"{at}.{k}"))
            lists[k] = _check_list(v, f"{at}.{k}", where, f"{at}.{k}")
        lengths = {k: len(v) for k, v in lists.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{where(at)}{at}: lists must have equal lengths, got {lengths}")
        n = next(iter(lengths.values()))
        groups.append([{k: (lists[k][i], f"{at}.{k}[{i}]") for k in lists} for i in range(n)])
        keys.extend(lists)
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ConfigError(f"{where('axes')}{sorted(dup)} appear in more than one axis or zip group")
    return groups, keys


def _check_overrides(where: SourceMap, product_keys: list[str]) -> None:
    """An override of an axis or zip key would be replaced in every cell of the product: refuse it."""
    for key, text in where.overrides.items():
        key = key[len("base."):]
        hit = [a for a in product_keys if a == key or a.startswith(key + ".") or key.startswith(a + ".")]
        if hit:
            raise ConfigError(f"override {text!r}: {hit[0]} is an axis of this study; every cell of its product sets "
                              f"it, so the override would be ignored (edit the axis in {where.path} instead)")


def _exclude_entry(entry: dict, at: str, where: SourceMap, keys: list[str]) -> dict[str, Any]:
    """An exclude entry's values in canonical form; its keys must be axis or zip keys."""
    if not entry:
        raise ConfigError(f"{where(at)}{at}: an empty entry would drop every cell; give axis keys and values")
    wanted = {}
    for key, value in entry.items():
        if key not in keys:
            hint = did_you_mean(key, keys)
            raise ConfigError(f"{where(f'{at}.{key}')}{at}: {key!r} is not an axis or zip key of this study{hint}. "
                              f"Axis keys: {', '.join(keys) or '(none)'}")
        wanted[key] = coerce_setting(key, value, where(f"{at}.{key}"))
    return wanted


def _drop_excluded(product: list[Choice], raw: dict, where: SourceMap, keys: list[str]) -> list[Choice]:
    """The product without the cells an exclude entry matches (every key equal, values compared as
    typed config values); an entry that matches no cell is an error, not a silent no-op."""
    entries = _entries(raw, "exclude", where)
    if not entries:
        return product
    wanted = [_exclude_entry(entry, f"exclude[{i}]", where, keys) for i, entry in enumerate(entries)]
    typed = [{k: coerce_setting(k, v, where(src)) for k, (v, src) in choice.items()} for choice in product]
    hits = [[all(cell[k] == v for k, v in ex.items()) for ex in wanted] for cell in typed]
    for i, ex in enumerate(wanted):
        if not any(h[i] for h in hits):
            seen = "; ".join(f"{k}: {show(list(dict.fromkeys(cell[k] for cell in typed)))}" for k in ex)
            raise ConfigError(f"{where(f'exclude[{i}]')}exclude[{i}]: {show(entries[i])} matches no cell of the "
                              f"product, so it would drop nothing. The product's values: {seen}")
    return [choice for choice, h in zip(product, hits) if not any(h)]


def _includes(raw: dict, where: SourceMap) -> list[Choice]:
    out = []
    for i, entry in enumerate(_entries(raw, "include", where)):
        for key in entry:
            setting_type(key, where(f"include[{i}].{key}"))
        out.append({k: (v, f"include[{i}].{k}") for k, v in entry.items()})
    return out


def _cells(choices: list[Choice], base: dict, base_cfg: RunConfig, axis_keys: list[str], product_keys: set[str],
           where: SourceMap) -> list[Cell]:
    """Validate every choice into a cell; a choice that repeats an earlier cell's config is the same run.
    Two choices that differ only in execution settings are one experiment: an error, naming both."""
    base_values = {k: get_path(base_cfg, k, None) for k in axis_keys}
    cells, seen, configs = [], set(), {}
    for choice in choices:
        cell_where = _cell_where(where, choice)
        data = _deep_copy(base)
        for k, (v, _) in choice.items():
            set_path(data, k, v)
        cfg = build_config(data, where=cell_where)
        check_references(cfg, cell_where)
        h = config_hash(cfg)
        if h in seen:
            if configs[h] != cfg:
                raise _same_experiment(configs[h], cfg, cell_where)
            continue
        seen.add(h)
        configs[h] = cfg
        ordered = {k: get_path(cfg, k, None) for k in axis_keys}  # every axis, also those an include leaves at base
        # Named by every product axis, plus the include-only keys where the cell leaves the base value:
        # a one-factor-at-a-time study reads "lora", "lr=0.003", "base" rather than every key of every include.
        shown = {k: v for k, v in ordered.items() if k in product_keys or v != base_values[k]}
        cells.append(Cell(ordered, cfg, h, run_name(shown), legacy_hashes(cfg)))
    if not cells:
        raise ConfigError(
            f"{where('exclude')}the study has no cells: its exclude entries drop every cell of the product")
    return cells


def _same_experiment(first: RunConfig, again: RunConfig, where: SourceMap) -> ConfigError:
    """Two cells whose configs differ only where the identity does not look: one run, not two."""
    diff = sorted(k for k, v in execution_dict(again).items() if execution_dict(first)[k] != v)
    if diff:
        what = (f"only in execution settings ({', '.join(diff)}), which do not change what a run learns "
                "and are not part of its identity. Set them in the base, or run the study twice")
    else:
        what = ("only in what a run's identity leaves out: data.optional_test, or the paths of manifests "
                "whose content is the same (the identity reads the content)")
    return ConfigError(f"{where(diff[0] if diff else 'data')}two cells of the study differ {what}")


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def _cell_where(where: SourceMap, choice: Choice) -> SourceMap:
    """Map a config key to the study-file line that set it: the axis value, zip value or include
    entry of this cell, else the base section; overrides of the base keep their blame."""
    lines = {k[len("base."):]: ln for k, ln in where.lines.items() if k.startswith("base.")}
    for key, (_, src) in choice.items():
        for k in [k for k in lines if k == key or k.startswith(key + ".")]:
            del lines[k]  # the choice replaced what the base wrote there
        line = where.lines.get(src, where.lines.get(re.sub(r"\[\d+\]$", "", src)))
        if line is not None:
            lines[key] = line
    cell = SourceMap(where.path, lines)
    cell.overrides = {k[len("base."):]: text for k, text in where.overrides.items() if k[len("base."):] not in choice}
    return cell


def check_references(cfg: RunConfig, where: SourceMap) -> None:
    from harness.models import PROJECTORS, check_reference
    from harness.models.sources import ModelLoadError
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
