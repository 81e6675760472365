"""The one way a study's axis values are printed in tables and figures: models by their paper name."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis import paper

DASH = "—"


def missing(v: Any) -> bool:
    """None, NaN, pd.NA or pd.NaT: a value a run did not log."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


def axis_label(key: str, value: Any) -> str:
    """How an axis value is printed: model references by their paper (or short) name."""
    if missing(value):
        return DASH
    if key in ("encoder.name", "llm.name") and isinstance(value, str):
        return paper.display_name(value)
    if key == "encoder.trainable" and isinstance(value, (bool, np.bool_)):
        return "trainable" if value else "frozen"
    return str(value)


def axis_labels(key: str, values: list) -> list[str]:
    """Short labels of one axis's values; two references with one short name (hf:openai/whisper-base,
    pack:whisper-base) keep their full names."""
    labels = [axis_label(key, v) for v in values]
    return labels if len(set(labels)) == len(labels) else [str(v) for v in values]


def combo_label(row: dict[str, Any], keys: Sequence[str]) -> str:
    """``k=5, frozen, whisper-base``: models and frozen/trainable speak for themselves, other values get their key."""
    def one(k: str) -> str:
        label = axis_label(k, row.get(k))
        return label if k in ("encoder.name", "llm.name", "encoder.trainable") else f"{k.split('.')[-1]}={label}"

    return ", ".join(one(k) for k in keys) or "all runs"


def hashable(v: Any) -> Any:
    """A value usable as a group key (mappings and lists by their repr)."""
    return repr(v) if isinstance(v, (dict, list)) else v
