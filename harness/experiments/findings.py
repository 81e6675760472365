"""Findings a study declares: a claim, the arms that test it, the metric, and the direction expected.

A study file may list them (``analysis.findings`` evaluates them on the runs; ``harness study report``
writes the table)::

    seeds: [0, 1, 2]                       # every cell once per seed: replicates, not a factor
    findings:
      - claim: the stronger encoder emerges earlier
        compare: {encoder.name: [pack:whisper-base, pack:whisper-tiny.en]}   # arm A, arm B
        metric: emergence_step             # see METRICS
        expect: lower                      # A lower than B
        where: {adapter.k: 10}             # optional: only the cells with these values
        paper: "Fig. 3: ..."               # optional: the paper's evidence, as text
      - claim: capability emergence exists
        metric: emerged
        expect: higher
        than: 0.5                          # one arm (every cell in where) against a fixed value

``compare`` names one axis of the study and two of its values; ``where`` keys are axes too. The runs of
an arm are every finished cell with the arm's value (and the ``where`` values), over all seeds; arms are
matched on the study's other axes, so a finding compares like with like.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from harness.config import ConfigError, FrozenDict, SourceMap, coerce_setting, show
from harness.registry import did_you_mean

FINDING_KEYS = ("claim", "compare", "metric", "expect", "where", "than", "paper")
EXPECT = ("lower", "higher")
METRICS = (
    "test/wer (the first test split), test/<split>/wer, emergence_step, emerged, diverged, "
    "dev/acc@<step> (dev accuracy at that evaluation), or any final metric a run logs (e.g. dev/acc)"
)
_METRIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./@-]*")


@dataclass(frozen=True)
class Finding:
    """One claim of a study, tested by its runs."""

    claim: str
    """What the claim says, in words (the table's first column)."""
    metric: str
    """What is compared: one of :data:`METRICS`."""
    expect: str
    """``lower`` or ``higher``: arm A's metric relative to arm B's (or to ``than``)."""
    key: str = ""
    """The compared axis (empty for a one-arm finding)."""
    arms: tuple[Any, ...] = ()
    """The compared values of ``key``: (arm A, arm B), typed as the config types them."""
    than: float = math.nan
    """A one-arm finding: the fixed value the arm is tested against."""
    where: FrozenDict = field(default_factory=FrozenDict)
    """Only the cells with these axis values."""
    paper: str = ""
    """The paper's evidence for the claim (table or figure and its numbers)."""

    @property
    def one_arm(self) -> bool:
        return not self.key


def parse_findings(raw: Any, where: SourceMap, axis_values: dict[str, list[Any]]) -> tuple[Finding, ...]:
    """The ``findings`` section checked against the study's axes (``axis_values``: axis -> typed values)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where('findings')}findings: expected a list of mappings (each '- {{claim: ..., ...}}'), "
                          f"got {type(raw).__name__}")
    return tuple(_finding(entry, f"findings[{i}]", where, axis_values) for i, entry in enumerate(raw))


def _finding(entry: Any, at: str, where: SourceMap, axis_values: dict[str, list[Any]]) -> Finding:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where(at)}{at}: expected a mapping with claim, metric, expect and compare (or than), "
                          f"got {show(entry)}")
    for key in entry:
        if key not in FINDING_KEYS:
            raise ConfigError(f"{where(f'{at}.{key}')}{at}: unknown key {key!r}{did_you_mean(str(key), FINDING_KEYS)}. "
                              f"Valid keys: {', '.join(FINDING_KEYS)}")
    claim = _text(entry, "claim", at, where, required=True)
    metric = _text(entry, "metric", at, where, required=True)
    if not _METRIC.fullmatch(metric):
        raise ConfigError(f"{where(f'{at}.metric')}{at}.metric: expected {METRICS}; got {show(metric)}")
    expect = entry.get("expect")
    if expect not in EXPECT:
        raise ConfigError(f"{where(f'{at}.expect')}{at}.expect: expected 'lower' or 'higher' (arm A relative to "
                          f"arm B), got {show(expect)}")
    has_compare, has_than = "compare" in entry, "than" in entry
    if has_compare == has_than:
        raise ConfigError(f"{where(at)}{at}: give either compare (two arms) or than (one arm against a value), "
                          f"{'not both' if has_compare else 'got neither'}")
    key, arms, than = "", (), math.nan
    if has_compare:
        key, arms = _compare(entry["compare"], f"{at}.compare", where, axis_values)
    else:
        than = entry["than"]
        if isinstance(than, bool) or not isinstance(than, (int, float)) or not math.isfinite(than):
            raise ConfigError(f"{where(f'{at}.than')}{at}.than: expected a finite number, got {show(than)}")
    return Finding(claim=claim, metric=metric, expect=expect, key=key, arms=arms, than=float(than),
                   where=_where(entry.get("where"), f"{at}.where", where, axis_values, exclude=key),
                   paper=_text(entry, "paper", at, where, required=False))


def _text(entry: dict, key: str, at: str, where: SourceMap, *, required: bool) -> str:
    value = entry.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where(f'{at}.{key}' if key in entry else at)}{at}.{key}: expected a non-empty string, "
                          f"got {show(value)}")
    return value.strip()


def _axis(key: Any, at: str, where: SourceMap, axis_values: dict[str, list[Any]]) -> str:
    if key not in axis_values:
        raise ConfigError(f"{where(at)}{at}: {show(key)} is not an axis of this study{did_you_mean(str(key), list(axis_values))}. "
                          f"Axes: {', '.join(axis_values) or '(none)'}")
    return key


def _value(key: str, value: Any, at: str, where: SourceMap, axis_values: dict[str, list[Any]]) -> Any:
    typed = coerce_setting(key, value, where(at))
    if typed not in axis_values[key]:
        raise ConfigError(f"{where(at)}{at}: {show(value)} is not a value of axis {key}; its values: "
                          f"{show(axis_values[key])}")
    return typed


def _compare(raw: Any, at: str, where: SourceMap, axis_values: dict[str, list[Any]]) -> tuple[str, tuple[Any, Any]]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(f"{where(at)}{at}: expected one axis and its two values, e.g. "
                          f"{{encoder.trainable: [false, true]}}; got {show(raw)}")
    (key, values), = raw.items()
    key = _axis(key, f"{at}.{key}", where, axis_values)
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"{where(f'{at}.{key}')}{at}.{key}: expected two values [arm A, arm B], got {show(values)}")
    arms = tuple(_value(key, v, f"{at}.{key}", where, axis_values) for v in values)
    if arms[0] == arms[1]:
        raise ConfigError(f"{where(f'{at}.{key}')}{at}.{key}: the two arms are the same value {show(values[0])}")
    return key, arms


def _where(raw: Any, at: str, where: SourceMap, axis_values: dict[str, list[Any]], *, exclude: str) -> FrozenDict:
    if raw is None:
        return FrozenDict()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where(at)}{at}: expected a mapping of axis values, got {show(raw)}")
    out = {}
    for key, value in raw.items():
        key = _axis(key, f"{at}.{key}", where, axis_values)
        if key == exclude:
            raise ConfigError(f"{where(f'{at}.{key}')}{at}.{key}: this axis is the one compared; it cannot also be fixed")
        out[key] = _value(key, value, f"{at}.{key}", where, axis_values)
    return FrozenDict(out)
