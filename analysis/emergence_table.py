"""A factor table of emergence: for each cell, when its training accuracy jumped and what it reached.

    python -m analysis.emergence_table studies/english_emergence.yaml [--tracking-uri URI]

One row per finished or running cell, named by its run name and cell hash: the emergence step
(``harness.run.emergence``; for a run not finished, the same detector on its steps so far, saying at which step), the training minutes to it (the sum of ``train/step_seconds`` up to that
step: training only, evaluations excluded), the median seconds per step, dev teacher-forced accuracy
at every evaluation, the CTC head's own dev WER at the last evaluation (cells with ``adapter.ctc``),
and the WER of every test split. Printed as Markdown.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from analysis.data import load_histories, load_runs
from harness.run.emergence import find_emergence
from analysis.tables import Table

HISTORY = ("train/step_seconds", "train/acc", "dev/acc", "dev/ctc_wer")


def _series(histories: pd.DataFrame, run_id: str, metric: str) -> pd.Series:
    h = histories[(histories.run_id == run_id) & (histories.metric == metric)]
    return pd.Series(h["value"].to_numpy(), index=h["step"].to_numpy(), dtype=float)


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def emergence_table(runs: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """The table as a DataFrame of display strings, one row per run in study order."""
    splits = sorted({c.split("/")[1] for c in runs.columns if c.startswith("test/") and c.endswith("/wer")})
    rows = []
    for _, r in runs.iterrows():
        secs = _series(histories, r.run_id, "train/step_seconds")
        acc = _series(histories, r.run_id, "dev/acc")
        ctc = _series(histories, r.run_id, "dev/ctc_wer")
        step, emerged, note = r.get("emergence_step"), r.get("emerged"), ""
        train_acc = _series(histories, r.run_id, "train/acc")
        if (emerged is None or math.isnan(emerged)) and len(train_acc):  # not finished: the detector on the steps so far
            found = find_emergence(list(train_acc.index), list(train_acc.to_numpy()))
            emerged, step, note = float(found.emerged), found.step if found.emerged else math.nan, f" (at step {int(train_acc.index[-1])})"
        emerged = emerged == 1 and not math.isnan(step)
        row = {
            "cell": r.run_name, "hash": str(r.cell_hash)[:12], "state": r.state,
            "emergence step": (f"{int(step)}" if emerged else "none" if r.get("emerged") == 0 or note else "-") + note,
            "minutes to emergence": f"{secs[secs.index <= step].sum() / 60:.1f}" if emerged else "-",
            "s/step": f"{secs.median():.2f}" if len(secs) else "-",
            "dev acc at steps": " / ".join(f"{v:.3f}@{int(s)}" for s, v in acc.items()) or "-",
            "dev CTC WER (%)": _pct(ctc.iloc[-1]) if len(ctc) else "-",
        }
        for s in splits:
            row[f"WER {s} (%)"] = _pct(r.get(f"test/{s}/wer"))
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args(argv)
    runs = load_runs(args.study, tracking_uri=args.tracking_uri)
    if runs.empty:
        raise SystemExit(f"{args.study}: no runs in the store yet")
    histories = load_histories(args.study, HISTORY, tracking_uri=args.tracking_uri, runs=runs)
    table = emergence_table(runs, histories).set_index("cell")
    caption = "minutes: training steps only (evaluations excluded); accuracy: teacher-forced, dev; WER: greedy"
    print(Table("emergence", f"Emergence in {runs.attrs['study']}", caption, table, table).to_markdown())


if __name__ == "__main__":
    from harness.cli.common import script_main

    script_main(main)  # one line per error (HARNESS_DEBUG=1: the traceback)
