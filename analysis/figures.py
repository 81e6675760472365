"""Figures of a study, in one style, saved as PNG and SVG.

Each function takes the DataFrames of :mod:`analysis.data` and an output folder, and returns a
:class:`FigureResult` with the saved paths; when the study lacks what a figure needs (an axis
with two values, finished runs, training curves) nothing is drawn and ``skipped`` says why::

    >>> from analysis import data, figures
    >>> runs = data.load_runs("studies/quickstart.yaml")  # doctest: +SKIP
    >>> hist = data.load_histories("studies/quickstart.yaml", runs=runs)  # doctest: +SKIP
    >>> fig = figures.emergence_figure(runs, hist, out_dir="reports/quickstart/figures")  # doctest: +SKIP
    >>> fig.png if not fig.skipped else fig.skipped  # doctest: +SKIP

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through
pyplot, so they change no global backend or state (safe inside a notebook or a server).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from analysis.labels import axis_label, combo_label, hashable, missing
from analysis.tables import test_splits
from harness.run.emergence import smooth

# One look for every figure of the harness.
STYLE: dict[str, Any] = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7.5,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.6, "savefig.bbox": "tight",
    "figure.dpi": 110, "savefig.dpi": 130, "svg.hashsalt": "slam-harness",  # stable SVG ids
}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
LINESTYLES = ("-", "--", ":", "-.")
SPLIT_MARKERS = ("o", "s", "^", "v", "D", "P")


@dataclass
class FigureResult:
    """A drawn figure (``paths``: PNG then SVG) or the reason it was skipped."""

    name: str
    title: str
    caption: str
    paths: list[Path] = field(default_factory=list)
    skipped: str | None = None

    @property
    def png(self) -> Path | None:
        return next((p for p in self.paths if p.suffix == ".png"), None)


def _skip(name: str, title: str, reason: str) -> FigureResult:
    return FigureResult(name, title, "", [], reason)


def _save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, metadata={"Date": None} if p.suffix == ".svg" else None)
    return paths


def _grid(n: int, *, width: float = 4.2, height: float = 3.0, max_cols: int = 3) -> tuple[Figure, list[Any]]:
    ncols = min(max_cols, max(1, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _axes_of(runs: pd.DataFrame) -> list[str]:
    return [a for a in runs.attrs.get("axes", []) if a in runs.columns]


def _varying(runs: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k in runs.columns and runs[k].map(hashable).nunique(dropna=False) > 1]


def _window(n: int) -> int:
    """The smoothing window harness.run.emergence uses for a curve of n steps."""
    return max(5, n // 20)


def _with_wer(runs: pd.DataFrame) -> pd.DataFrame:
    fin = runs[runs["status"] == "FINISHED"] if "status" in runs.columns else runs
    splits = test_splits(fin)
    return fin[fin[[f"test/{s}/wer" for s in splits]].notna().any(axis=1)] if splits else fin.iloc[0:0]


def _yerr(rows: pd.DataFrame, split: str) -> np.ndarray | None:
    lo_c, hi_c = f"ci/{split}/lo", f"ci/{split}/hi"
    if lo_c not in rows.columns:
        return None
    wer = rows[f"test/{split}/wer"].to_numpy(float)
    lo, hi = rows[lo_c].to_numpy(float), rows[hi_c].to_numpy(float)
    err = np.vstack([wer - lo, hi - wer]) * 100
    return np.nan_to_num(err, nan=0.0).clip(min=0)


# ----------------------------------------------------------------------------------------------
# Training curves


def emergence_figure(
    runs: pd.DataFrame,
    histories: pd.DataFrame,
    *,
    out_dir: str | Path,
    by: str = "encoder.name",
    name: str | None = None,
) -> FigureResult:
    """Training accuracy vs step, one line per value of ``by`` (paper Fig. 1: encoders, Fig. 2: LLMs).

    Curves are smoothed with :func:`harness.run.emergence.smooth` (the window the emergence step is
    computed with; raw values faint behind) and each run's logged ``emergence_step`` is marked.
    When other axes vary too, each combination of them gets its own panel.

    Example::

        >>> emergence_figure(runs, hist, out_dir="figs", by="llm.name").skipped  # doctest: +SKIP
    """
    what = {"encoder.name": "encoder", "llm.name": "LLM"}.get(by, by)
    name = name or f"emergence_by_{what.lower().replace('.', '_')}"
    title = f"Capability emergence by {what}"
    acc = histories[histories["metric"] == "train/acc"] if len(histories) else histories
    have = runs[runs["run_id"].isin(set(acc["run_id"]))] if len(acc) else runs.iloc[0:0]
    if by not in runs.columns:
        return _skip(name, title, f"the runs have no {by!r} column")
    if have[by].map(hashable).nunique() < 2:
        return _skip(name, title,
                     f"the study does not vary {by} across runs with training curves (needs 2 values or more)")
    others = _varying(have, [a for a in _axes_of(runs) if a != by])
    panels = list(dict.fromkeys(tuple(hashable(v) for v in vals) for vals in have[others].itertuples(index=False))) \
        if others else [()]
    colors = {v: COLORS[i % len(COLORS)] for i, v in enumerate(dict.fromkeys(have[by].map(hashable)))}
    windows = set()
    with rc_context(STYLE):
        fig, axes = _grid(len(panels))
        for ax, panel in zip(axes, panels):
            sel = have if not others else have[[tuple(hashable(v) for v in vals) == panel
                                                 for vals in have[others].itertuples(index=False)]]
            for row in sel.to_dict("records"):
                h = acc[acc["run_id"] == row["run_id"]].sort_values("step")
                steps, vals = h["step"].to_numpy(), h["value"].to_numpy(float)
                w = _window(len(vals))
                windows.add(w)
                sm = smooth(vals, w)
                color = colors[hashable(row[by])]
                ax.plot(steps, vals, color=color, alpha=0.18, lw=0.8)
                step = row.get("emergence_step")
                label = axis_label(by, row[by]) + ("" if missing(step) else f" (step {int(step)})")
                ax.plot(steps, sm, color=color, label=label)
                if not missing(step):
                    ax.axvline(step, color=color, ls="--", lw=1.0, alpha=0.8)
                    ax.plot([step], [np.interp(step, steps, sm)], marker="o", color=color, ms=5, mec="white")
            ax.set(xlabel="step", ylabel="train accuracy (teacher-forced)", ylim=(0, 1))
            if others:
                ax.set_title(combo_label(dict(zip(others, sel[others].iloc[0])), others), fontsize=8.5)
            ax.legend(loc="lower right", title=what)
        fig.suptitle(title)
        paths = _save(fig, out_dir, name)
    fig_no = {"encoder.name": " (paper Fig. 1)", "llm.name": " (paper Fig. 2)"}.get(by, "")
    caption = (f"Teacher-forced training accuracy vs step, one line per {what}{fig_no}; smoothed with a "
               f"{'/'.join(map(str, sorted(windows)))}-step moving average (raw values faint); dashed line and dot: "
               f"the run's logged emergence step (runs without one did not emerge).")
    return FigureResult(name, title, caption, paths)


def frozen_vs_trainable_figure(runs: pd.DataFrame, histories: pd.DataFrame, *, out_dir: str | Path) -> FigureResult:
    """Training accuracy and loss vs step for frozen and trainable encoders (the paper's frozen-encoder figure).

    Example::

        >>> frozen_vs_trainable_figure(runs, hist, out_dir="figs").paths  # doctest: +SKIP
    """
    name, title = "frozen_vs_trainable", "Frozen vs trainable encoder"
    key = "encoder.trainable"
    have = runs[runs["run_id"].isin(set(histories["run_id"]))] if len(histories) else runs.iloc[0:0]
    if key not in runs.columns or set(have[key].dropna().map(bool)) != {True, False}:
        return _skip(name, title,
                     "the study has no run with a frozen and one with a trainable encoder (encoder.trainable)")
    others = _varying(have, [a for a in _axes_of(runs) if a != key])
    combos = list(dict.fromkeys(combo_label(r, others) for r in have.to_dict("records")))
    with rc_context(STYLE):
        fig, (ax_acc, ax_loss) = _grid(2)
        for row in have.to_dict("records"):
            color = COLORS[1] if row[key] else COLORS[0]
            ls = LINESTYLES[combos.index(combo_label(row, others)) % len(LINESTYLES)]
            for ax, metric in ((ax_acc, "train/acc"), (ax_loss, "train/loss")):
                h = histories[(histories["run_id"] == row["run_id"]) & (histories["metric"] == metric)]
                h = h.sort_values("step")
                if h.empty:
                    continue
                vals = h["value"].to_numpy(float)
                ax.plot(h["step"], vals, color=color, alpha=0.15, lw=0.8)
                ax.plot(h["step"], smooth(vals, _window(len(vals))), color=color, ls=ls)
        ax_acc.set(xlabel="step", ylabel="train accuracy (teacher-forced)", ylim=(0, 1), title="accuracy")
        ax_loss.set(xlabel="step", ylabel="train loss", title="loss")
        handles = [Line2D([], [], color=COLORS[0], label="frozen encoder"),
                   Line2D([], [], color=COLORS[1], label="trainable encoder")]
        if len(combos) > 1:
            handles += [Line2D([], [], color="0.4", ls=LINESTYLES[i % len(LINESTYLES)], label=c)
                        for i, c in enumerate(combos)]
        ax_loss.legend(handles=handles, loc="upper right")
        fig.suptitle(title)
        paths = _save(fig, out_dir, name)
    caption = ("Training accuracy (left) and loss (right) vs step, smoothed (raw faint): blue = frozen encoder, "
               "red = encoder trained with the projector"
               + ("; line styles: the other varying axes." if len(combos) > 1 else "."))
    return FigureResult(name, title, caption, paths)


# ----------------------------------------------------------------------------------------------
# WER


def wer_figure(runs: pd.DataFrame, *, out_dir: str | Path) -> FigureResult:
    """WER (%) per configuration with 95% bootstrap error bars, one marker per test split, the paper's as diamonds.

    Example::

        >>> wer_figure(add_intervals(runs), out_dir="figs").png  # doctest: +SKIP
    """
    name, title = "wer_by_run", "WER per configuration"
    fin = _with_wer(runs)
    if fin.empty:
        return _skip(name, title, "no finished run with a test WER")
    splits = test_splits(fin)
    n = len(fin)
    with rc_context(STYLE):
        fig = Figure(figsize=(6.4, 1.2 + 0.38 * n * max(1, len(splits)) ** 0.5), layout="constrained")
        ax = fig.subplots()
        y = np.arange(n)
        off = np.linspace(-0.25, 0.25, len(splits)) if len(splits) > 1 else np.zeros(1)
        for j, s in enumerate(splits):
            wer = fin[f"test/{s}/wer"].to_numpy(float) * 100
            ax.errorbar(wer, y + off[j], xerr=_yerr(fin, s), fmt=SPLIT_MARKERS[j % len(SPLIT_MARKERS)],
                        color=COLORS[j % len(COLORS)], capsize=3, label=s)
            pc = f"paper/{s}/wer"
            if pc in fin.columns and fin[pc].notna().any():
                ax.plot(fin[pc].to_numpy(float) * 100, y + off[j], "D", mfc="none", color=COLORS[j % len(COLORS)],
                        ms=7, label=f"{s} (paper)")
        ax.set_yticks(y, list(fin["run_name"]))
        ax.invert_yaxis()
        ax.set(xlabel="WER (%)", title=title)
        ax.legend(loc="best")
        paths = _save(fig, out_dir, name)
    ci = any(f"ci/{s}/lo" in fin.columns for s in splits)
    caption = ("WER (%) of each finished run on each test split"
               + (" with 95% bootstrap intervals over utterances" if ci else "")
               + "; open diamonds: the paper's number for the same encoder, LLM and recipe, where published.")
    return FigureResult(name, title, caption, paths)


def _wer_lines(
    runs: pd.DataFrame, x: str, *, out_dir: str | Path, name: str, title: str, xlabel: str, log_x: bool = False,
    connect: bool = True,
) -> FigureResult:
    """WER vs a numeric column, one panel per split, one line per combination of the other varying axes."""
    fin = _with_wer(runs)
    fin = fin[fin[x].notna()] if x in fin.columns else fin.iloc[0:0]
    if fin[x].nunique() < 2:
        return _skip(name, title, f"fewer than 2 distinct values of {x} among finished runs with a test WER")
    splits = test_splits(fin)
    # Points of one line share every other axis value; WER vs parameters is one labelled cloud instead.
    others = [a for a in _varying(fin, _axes_of(runs)) if a != x] if connect else []
    with rc_context(STYLE):
        fig, axes = _grid(len(splits), width=4.0, height=3.0)
        for ax, s in zip(axes, splits):
            groups = fin.groupby([fin[o].map(hashable) for o in others], sort=False) if others else [((), fin)]
            for i, (_, g) in enumerate(groups):
                g = g.sort_values(x)
                label = combo_label(g.iloc[0].to_dict(), others)
                ax.errorbar(g[x].to_numpy(float), g[f"test/{s}/wer"].to_numpy(float) * 100, yerr=_yerr(g, s),
                            fmt="-o" if connect else "o", color=COLORS[i % len(COLORS)], capsize=3, ms=4, label=label)
                if not connect and len(g) <= 12:
                    for xv, yv, rn in zip(g[x], g[f"test/{s}/wer"] * 100, g["run_name"]):
                        ax.annotate(str(rn), (xv, yv), fontsize=6.5, xytext=(3, 3), textcoords="offset points",
                                    color="0.3")
            if log_x:
                # Log scale only where the values span more than a decade; label in millions either way
                # (matplotlib's minor log labels pile up on a narrow range).
                values = fin[x].dropna()
                if len(values) and values.min() > 0 and values.max() / values.min() > 10:
                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M"))
                ax.margins(x=0.15)  # points (and their error bars) off the frame
            elif x == "adapter.k":
                ax.set_xticks(sorted(fin[x].unique()))
            ax.set(xlabel=xlabel, ylabel="WER (%)", title=s)
            if others:
                ax.legend(loc="best")
        fig.suptitle(title)
        paths = _save(fig, out_dir, name)
    ci = any(f"ci/{s}/lo" in fin.columns for s in splits)
    caption = (f"WER (%) vs {xlabel} for each test split" + (" (95% bootstrap error bars)" if ci else "")
               + (f"; one line per {', '.join(others)}" if others else "")
               + ("; points labelled by run" if not connect else "")
               + ".")
    return FigureResult(name, title, caption, paths)


def wer_vs_k_figure(runs: pd.DataFrame, *, out_dir: str | Path) -> FigureResult:
    """WER (%) vs the downsample rate k (adapter.k), with error bars.

    Example::

        >>> wer_vs_k_figure(add_intervals(runs), out_dir="figs").skipped  # doctest: +SKIP
    """
    return _wer_lines(runs, "adapter.k", out_dir=out_dir, name="wer_vs_k", title="WER vs downsample rate k",
                      xlabel="downsample rate k (encoder frames per LLM token)")


def wer_vs_params_figure(runs: pd.DataFrame, *, out_dir: str | Path) -> FigureResult:
    """WER (%) vs trainable parameters (params/trainable, log scale), each run labelled.

    Example::

        >>> wer_vs_params_figure(runs, out_dir="figs").png  # doctest: +SKIP
    """
    return _wer_lines(runs, "params/trainable", out_dir=out_dir, name="wer_vs_params", log_x=True, connect=False,
                      title="WER vs trainable parameters", xlabel="trainable parameters")


def emergence_axes(runs: pd.DataFrame) -> list[str]:
    """The axes the report draws emergence curves for: encoders and LLMs (the paper's two figures)
    when the study varies them, else the first varying axis."""
    varying = _varying(runs, _axes_of(runs))
    chosen = [a for a in ("encoder.name", "llm.name") if a in varying]
    return chosen or varying[:1]


def all_figures(runs: pd.DataFrame, histories: pd.DataFrame, *, out_dir: str | Path) -> list[FigureResult]:
    """Every figure that applies to the study (the others come back skipped, with the reason).

    Example::

        >>> [f.skipped or f.png for f in all_figures(runs, hist, out_dir="figs")]  # doctest: +SKIP
    """
    out: list[FigureResult] = []
    axes = emergence_axes(runs)
    for by in ("encoder.name", "llm.name"):
        if by not in axes:
            out.append(emergence_figure(runs, histories, out_dir=out_dir, by=by))  # skipped, with its reason
    for by in axes:
        out.append(emergence_figure(runs, histories, out_dir=out_dir, by=by))
    out.append(frozen_vs_trainable_figure(runs, histories, out_dir=out_dir))
    out.append(wer_figure(runs, out_dir=out_dir))
    out.append(wer_vs_k_figure(runs, out_dir=out_dir))
    out.append(wer_vs_params_figure(runs, out_dir=out_dir))
    return out
