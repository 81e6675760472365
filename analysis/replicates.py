"""Replicates grouped: one row per arm of a study (its cells over every seed), with intervals across seeds.

A study's ``seeds`` (or a ``train.seed`` axis) make replicates, not a factor: this table groups each
combination of the other axes and reports, over its finished seeds,

- the emergence step: mean, t interval, spread (sd), and how many seeds never emerged (counted at their
  last step: censored, see :mod:`analysis.stats`);
- dev accuracy at each evaluation step: mean and t interval;
- test WER per split: the utterance bootstrap pooled over the seeds (:func:`analysis.stats.pooled_wer`)
  and the spread of the seeds' own WERs.

Example::

    >>> from analysis.replicates import replicates_table
    >>> runs = load_runs("studies/paper_findings.yaml")  # doctest: +SKIP
    >>> print(replicates_table(runs, load_histories("studies/paper_findings.yaml", runs=runs)).to_markdown())  # doctest: +SKIP
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis import stats
from analysis.data import TranscriptCache, error_matrix, tracking_uri_of
from analysis.labels import combo_label, hashable
from analysis.tables import Table, test_splits
from harness.experiments.study import REPLICATE_KEY


def factor_keys(runs: pd.DataFrame) -> list[str]:
    """The study's axes that are factors (every axis but the replicate seed)."""
    return [k for k in runs.attrs.get("axes", []) if k != REPLICATE_KEY]


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def _ci(e: stats.Estimate, fmt) -> str:
    return f"{fmt(e.value)}" + (f" [{fmt(e.lo)}, {fmt(e.hi)}]" if not math.isnan(e.lo) else "")


def _emergence(done: pd.DataFrame, level: float) -> tuple[dict[str, Any], str]:
    steps, censored = stats.censored_steps(done["emergence_step"].to_numpy(float), done["train.max_steps"].to_numpy(float))
    e = stats.mean_ci(steps, level=level)
    note = f" ({censored} never)" if censored else ""
    sd = "" if math.isnan(e.sd) else f", sd {e.sd:.1f}"
    return ({"emergence_step": e.value, "emergence_lo": e.lo, "emergence_hi": e.hi, "emergence_sd": e.sd,
             "never_emerged": censored}, _ci(e, lambda v: f"{v:.0f}") + sd + note)


def _dev_acc(done: pd.DataFrame, histories: pd.DataFrame, level: float) -> tuple[dict[str, Any], str]:
    h = histories[(histories["metric"] == "dev/acc") & histories["run_id"].isin(done["run_id"])]
    out, text = {}, []
    for step, at in h.groupby("step"):
        if len(at) < len(done):  # a step only some seeds reached (an unfinished run) says nothing of the arm
            continue
        e = stats.mean_ci(at["value"].to_numpy(float), level=level)
        out.update({f"dev/acc@{int(step)}": e.value, f"dev/acc@{int(step)}_lo": e.lo, f"dev/acc@{int(step)}_hi": e.hi})
        text.append(f"@{int(step)} {_ci(e, lambda v: f'{v:.3f}')}")
    return out, "; ".join(text) or "-"


def _wer(done: pd.DataFrame, split: str, cache: TranscriptCache, level: float, n_resamples: int) -> tuple[dict, str]:
    col = f"test/{split}/wer"
    if col not in done.columns or done[col].isna().any():
        return {}, "-"
    errors, words, _ = error_matrix([cache.get(r, split) for r in done["run_id"]])
    if words.sum() == 0:
        return {}, "-"
    ci = stats.pooled_wer(errors, np.broadcast_to(words, errors.shape), level=level, n_resamples=n_resamples)
    sd = float(done[col].std(ddof=1)) if len(done) > 1 else math.nan
    text = f"{_pct(ci.wer)} [{_pct(ci.lo)}, {_pct(ci.hi)}]" + ("" if math.isnan(sd) else f", sd {_pct(sd)}")
    return {col: ci.wer, f"{col}_lo": ci.lo, f"{col}_hi": ci.hi, f"{col}_seed_sd": sd}, text


def replicates_table(
    runs: pd.DataFrame,
    histories: pd.DataFrame,
    *,
    tracking_uri: str | None = None,
    level: float = 0.95,
    n_resamples: int = 2000,
) -> Table:
    """One row per arm (combination of the factor axes): seeds, emergence, dev accuracy, pooled test WER.
    ``histories``: :func:`analysis.data.load_histories` of the runs (``dev/acc`` is read)."""
    uri = tracking_uri_of(tracking_uri or runs.attrs.get("tracking_uri"))
    keys = factor_keys(runs)
    cache = TranscriptCache(uri)
    splits = test_splits(runs)
    rows, data = [], []
    groups = runs.groupby([runs[k].map(hashable) for k in keys], sort=False, dropna=False) if keys else [((), runs)]
    for _, arm in groups:
        done = arm[arm["state"] == "done"]
        first = arm.iloc[0].to_dict()
        record = {**{k: first.get(k) for k in keys}, "seeds": len(done), "failed": int((arm["state"] == "failed").sum())}
        shown = {"seeds": f"{len(done)}" + (f" ({record['failed']} failed)" if record["failed"] else "")}
        if len(done):
            values, shown["emergence step"] = _emergence(done, level)
            record.update(values)
            values, shown["dev acc (mean [CI])"] = _dev_acc(done, histories, level)
            record.update(values)
            for split in splits:
                values, shown[f"WER {split} % (pooled [CI])"] = _wer(done, split, cache, level, n_resamples)
                record.update(values)
        rows.append({"arm": combo_label(first, keys), **shown})
        data.append(record)
    display = pd.DataFrame(rows).set_index("arm").fillna("-")
    caption = (f"Each arm over its finished seeds; intervals at {100 * level:.0f} %: t across seeds for the "
               "emergence step and dev accuracy, the utterance bootstrap pooled over seeds for WER. A seed that "
               "never emerged is counted at its last step (a lower bound).")
    return Table("replicates", "Arms over seeds", caption, display, pd.DataFrame(data))
