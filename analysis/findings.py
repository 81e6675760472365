"""A study's findings tested on its runs: arms with intervals, the effect with its interval, a verdict.

For each :class:`harness.experiments.findings.Finding` of the study:

1. **Arms.** Arm A holds the finished runs whose compared axis has the first value, arm B the second,
   both restricted to the finding's ``where`` values. Arms are matched on every other factor of the study
   (not the seed): a combination of the other factors that only one arm ran is left out, so a finding
   compares like with like.
2. **Per arm.** Runs are seeds. A WER metric pools the arm's runs on the test utterances every run of both
   arms decoded (utterance bootstrap); ``emergence_step`` counts a run that never emerged at its last step
   (censored, see :mod:`analysis.stats`); ``emerged`` and ``diverged`` are rates (every run of the arm,
   failed ones included, for ``diverged``); any other metric is the mean of the runs' final values.
3. **The effect** is A minus B: the paired bootstrap for WER, Welch/permutation across seeds for a mean,
   Newcombe/Fisher for a rate; a one-arm finding tests the arm against ``than``.
4. **The verdict** (:func:`analysis.stats.verdict`): reproduced, refuted, or inconclusive when the
   interval of the effect spans 0 (or there are too few runs to have one).

Example::

    >>> from analysis.findings import evaluate_findings, findings_table
    >>> results = evaluate_findings("studies/paper_findings.yaml")  # doctest: +SKIP
    >>> print(findings_table(results).to_markdown())  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import stats
from analysis.data import TranscriptCache, as_study, error_matrix, load_histories, load_runs, tracking_uri_of
from analysis.labels import axis_label
from analysis.tables import Table, test_splits
from harness.experiments.findings import Finding
from harness.experiments.study import Study

log = logging.getLogger("analysis.findings")

_DEV_AT = re.compile(r"(dev/[A-Za-z0-9_./-]+)@(\d+)")
_WER = re.compile(r"test/(?:(.+)/)?wer")
RATES = ("emerged", "diverged")


@dataclass(frozen=True)
class Arm:
    """One side of a finding: its label, its estimate and how many runs it holds."""

    label: str
    estimate: stats.Estimate | None
    n_runs: int
    n_failed: int = 0
    n_censored: int = 0


@dataclass(frozen=True)
class FindingResult:
    finding: Finding
    metric: str  # the metric as resolved (test/wer -> test/<split>/wer)
    a: Arm
    b: Arm | None  # None for a one-arm finding
    effect: stats.Difference | None
    verdict: str
    note: str = ""


def evaluate_findings(
    study: str | Path | Study,
    *,
    runs: pd.DataFrame | None = None,
    tracking_uri: str | None = None,
    level: float = 0.95,
    n_resamples: int = 2000,
) -> list[FindingResult]:
    """Every finding of ``study`` tested on its runs in the tracking store (see the module docstring)."""
    study = as_study(study)
    uri = tracking_uri_of(tracking_uri)
    if runs is None:
        runs = load_runs(study, tracking_uri=uri)
    ctx = _Context(study, runs, uri, level, n_resamples)
    return [ctx.evaluate(f) for f in study.findings]


class _Context:
    """What every finding of one study reads: its runs, and the histories and transcripts, loaded once."""

    def __init__(self, study: Study, runs: pd.DataFrame, uri: str, level: float, n_resamples: int) -> None:
        self.study, self.uri, self.level, self.n_resamples = study, uri, level, n_resamples
        self.runs = runs[runs["in_study"]] if len(runs) else runs
        self._histories: pd.DataFrame | None = None
        self._transcripts = TranscriptCache(uri)
        self.transcripts = self._transcripts.get

    # -------------------------------------------------------------------- selecting runs
    def _select(self, finding: Finding) -> pd.DataFrame:
        runs = self.runs
        for key, value in finding.where.items():
            runs = runs[runs[key].map(lambda v, value=value: v == value)] if len(runs) else runs
        return runs

    def _arms(self, finding: Finding) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        runs = self._select(finding)
        if finding.one_arm or not len(runs):
            return runs, (None if finding.one_arm else runs.iloc[0:0])
        a = runs[runs[finding.key].map(lambda v: v == finding.arms[0])]
        b = runs[runs[finding.key].map(lambda v: v == finding.arms[1])]
        others = [k for k in self.study.factor_keys if k != finding.key and k not in finding.where]
        block = lambda df: df[others].apply(lambda r: tuple(map(repr, r)), axis=1) if others and len(df) else pd.Series("", index=df.index)  # noqa: E731
        shared = set(block(a)) & set(block(b))
        return a[block(a).isin(shared)], b[block(b).isin(shared)]

    # -------------------------------------------------------------------- one finding
    def evaluate(self, finding: Finding) -> FindingResult:
        metric = self._resolve(finding.metric)
        a_runs, b_runs = self._arms(finding)
        label_a = "all selected runs" if finding.one_arm else axis_label(finding.key, finding.arms[0])
        label_b = None if finding.one_arm else axis_label(finding.key, finding.arms[1])
        try:
            if metric in RATES:
                result = self._rate(finding, metric, a_runs, b_runs, label_a, label_b)
            elif _WER.fullmatch(metric):
                result = self._wer(finding, metric, a_runs, b_runs, label_a, label_b)
            else:
                result = self._mean(finding, metric, a_runs, b_runs, label_a, label_b)
        except _TooFew as e:
            result = FindingResult(finding, metric, Arm(label_a, None, e.n_a), None if label_b is None else Arm(label_b, None, e.n_b),
                                   None, "inconclusive", str(e))
        return result

    def _resolve(self, metric: str) -> str:
        if metric != "test/wer":
            return metric
        splits = test_splits(self.runs) if len(self.runs) else []
        return f"test/{splits[0]}/wer" if splits else metric

    # -------------------------------------------------------------------- rates
    def _rate(self, finding, metric, a_runs, b_runs, label_a, label_b) -> FindingResult:
        def count(df: pd.DataFrame) -> tuple[int, int]:
            if metric == "diverged":  # every run that ran counts: a diverged run is a failed one
                done = df[df["state"].isin(["done", "failed"])]
                return int(done["error"].astype(str).str.startswith("TrainingDiverged").sum()), len(done)
            done = df[df["state"] == "done"]
            return int((done.get("emerged", pd.Series(dtype=float)) == 1).sum()), len(done)

        (ka, na) = count(a_runs)
        if na == 0:
            raise _TooFew("no finished run in arm A", 0, 0)
        arm_a = Arm(label_a, stats.rate_ci(ka, na, level=self.level), na)
        if finding.one_arm:
            diff = _against(arm_a.estimate, finding.than, "exact binomial interval")
            return FindingResult(finding, metric, arm_a, None, diff, stats.verdict(diff, finding.expect), f"{ka} of {na} runs")
        kb, nb = count(b_runs)
        if nb == 0:
            raise _TooFew("no finished run in arm B", na, 0)
        diff = stats.rate_difference(ka, na, kb, nb, level=self.level)
        return FindingResult(finding, metric, arm_a, Arm(label_b, stats.rate_ci(kb, nb, level=self.level), nb), diff,
                             stats.verdict(diff, finding.expect), f"{ka} of {na} vs {kb} of {nb} runs")

    # -------------------------------------------------------------------- means across seeds
    def _values(self, metric: str, df: pd.DataFrame) -> tuple[np.ndarray, int]:
        """One value per finished run of ``df`` (emergence steps censored), and how many were censored."""
        done = df[df["state"] == "done"]
        if metric == "emergence_step":
            return stats.censored_steps(done["emergence_step"].to_numpy(float), done["train.max_steps"].to_numpy(float))
        m = _DEV_AT.fullmatch(metric)
        if m:
            h = self._history(m.group(1))
            at = h[(h["step"] == int(m.group(2))) & h["run_id"].isin(done["run_id"])]
            vals = [at.loc[at.run_id == r, "value"] for r in done["run_id"]]
            return np.array([float(v.iloc[-1]) for v in vals if len(v)]), 0
        if metric not in done.columns:
            return np.array([]), 0
        col = done[metric].to_numpy(float)
        return col[~np.isnan(col)], 0

    def _mean(self, finding, metric, a_runs, b_runs, label_a, label_b) -> FindingResult:
        va, ca = self._values(metric, a_runs)
        fail_a = _failed(a_runs)
        if len(va) == 0:
            raise _TooFew(f"no finished run of arm A logged {metric}", 0, 0)
        arm_a = Arm(label_a, stats.mean_ci(va, level=self.level), len(va), fail_a, ca)
        if finding.one_arm:
            diff = _against(arm_a.estimate, finding.than, "t interval across seeds")
            return FindingResult(finding, metric, arm_a, None, diff, stats.verdict(diff, finding.expect), _censor_note(ca, 0))
        vb, cb = self._values(metric, b_runs)
        if len(vb) == 0:
            raise _TooFew(f"no finished run of arm B logged {metric}", len(va), 0)
        arm_b = Arm(label_b, stats.mean_ci(vb, level=self.level), len(vb), _failed(b_runs), cb)
        diff = stats.mean_difference(va, vb, level=self.level)
        return FindingResult(finding, metric, arm_a, arm_b, diff, stats.verdict(diff, finding.expect), _censor_note(ca, cb))

    def _history(self, metric: str) -> pd.DataFrame:
        if self._histories is None or metric not in set(self._histories["metric"]):
            h = load_histories(self.study, [metric], tracking_uri=self.uri, runs=self.runs)
            self._histories = h if self._histories is None else pd.concat([self._histories, h], ignore_index=True)
        return self._histories[self._histories["metric"] == metric]

    # -------------------------------------------------------------------- WER on shared utterances
    def _matrices(self, split: str, arms: Sequence[pd.DataFrame]) -> tuple[list[np.ndarray], np.ndarray, int]:
        """Per arm a (runs, utterances) error matrix on the utterances every run of every arm decoded, their
        reference lengths, and how many utterances some run did not decode (left out)."""
        ids = [list(df.loc[df["state"] == "done", "run_id"]) for df in arms]
        tables = [self.transcripts(r, split) for arm in ids for r in arm]
        errors, words, kept = error_matrix(tables)
        n_all = max(len(t) for t in tables)
        bounds = np.cumsum([0] + [len(arm) for arm in ids])
        return [errors[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])], words, n_all - len(kept)

    def _wer(self, finding, metric, a_runs, b_runs, label_a, label_b) -> FindingResult:
        split = _WER.fullmatch(metric).group(1)
        if split is None:
            raise _TooFew("no run logged a test WER", 0, 0)
        arms = [a_runs] if finding.one_arm else [a_runs, b_runs]
        n = [int((df["state"] == "done").sum()) for df in arms]
        if min(n) == 0:
            raise _TooFew(f"no finished run in arm {'AB'[n.index(0)]}", n[0], n[-1] if len(n) > 1 else 0)
        errors, words, dropped = self._matrices(split, arms)
        if len(words) == 0 or words.sum() == 0:
            raise _TooFew(f"the arms share no scored utterance of {split}", *n, *([0] if finding.one_arm else []))
        kw = dict(level=self.level, n_resamples=self.n_resamples)
        est = [_wer_estimate(e, words, **kw) for e in errors]
        note = f"{len(words)} utterances of {split}" + (f" ({dropped} not decoded by every run left out)" if dropped else "")
        arm_a = Arm(label_a, est[0], n[0], _failed(a_runs))
        if finding.one_arm:
            diff = _against(est[0], finding.than, "utterance bootstrap")
            return FindingResult(finding, metric, arm_a, None, diff, stats.verdict(diff, finding.expect), note)
        diff = stats.paired_wer_difference(errors[0], errors[1], words, **kw)
        return FindingResult(finding, metric, arm_a, Arm(label_b, est[1], n[1], _failed(b_runs)), diff,
                             stats.verdict(diff, finding.expect), note)


class _TooFew(Exception):
    def __init__(self, message: str, n_a: int, n_b: int) -> None:
        super().__init__(message)
        self.n_a, self.n_b = n_a, n_b


def _failed(df: pd.DataFrame) -> int:
    return int((df["state"] == "failed").sum()) if len(df) else 0


def _censor_note(ca: int, cb: int) -> str:
    if not (ca or cb):
        return ""
    return (f"never emerged: {ca} run(s) of A, {cb} of B, counted at their last step (a lower bound)")


def _wer_estimate(errors: np.ndarray, words: np.ndarray, **kw) -> stats.Estimate:
    ci = stats.pooled_wer(errors, np.broadcast_to(words, errors.shape), **kw)
    return stats.Estimate(ci.wer, ci.lo, ci.hi, errors.shape[0])


def _against(est: stats.Estimate, than: float, method: str) -> stats.Difference:
    """A one-arm estimate read as a difference from a fixed value (the interval shifts with it)."""
    return stats.Difference(est.value - than, est.lo - than, est.hi - than, math.nan, method)


# ---------------------------------------------------------------------------------------- the table
def _fmt(metric: str, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if _WER.fullmatch(metric) or metric in RATES:
        return f"{100 * value:.1f} %"
    return f"{value:.0f}" if metric == "emergence_step" else f"{value:.3f}"


def _fmt_est(metric: str, arm: Arm | None) -> str:
    if arm is None:
        return ""
    if arm.estimate is None:
        return f"no estimate ({arm.n_runs} runs)"
    e = arm.estimate
    ci = f" [{_fmt(metric, e.lo)}, {_fmt(metric, e.hi)}]" if not math.isnan(e.lo) else " (one run: no interval)"
    extra = f"; {arm.n_failed} failed" if arm.n_failed else ""
    sd = f"; sd {_fmt(metric, e.sd)}" if metric == "emergence_step" and not math.isnan(e.sd) else ""
    return f"{arm.label}: {_fmt(metric, e.value)}{ci}, n={arm.n_runs}{sd}{extra}"


def _fmt_effect(metric: str, r: FindingResult) -> str:
    d = r.effect
    if d is None:
        return "-"
    unit = lambda v: ("+" if v > 0 else "") + _fmt(metric, v) if metric != "emergence_step" else f"{v:+.1f}"  # noqa: E731
    p = f"; p = {d.p:.3g}" if not math.isnan(d.p) else ""
    ci = f" [{unit(d.lo)}, {unit(d.hi)}]" if not math.isnan(d.lo) else " (no interval)"
    return f"{unit(d.effect)}{ci}{p}"


def findings_table(results: Sequence[FindingResult], *, level: float = 0.95) -> Table:
    """Claim, the paper's evidence, the arms with their intervals, the effect (A - B) and the verdict."""
    rows, data = [], []
    for r in results:
        f = r.finding
        compared = (f"{f.key}: A = {f.arms[0]!r}, B = {f.arms[1]!r}" if not f.one_arm else f"one arm vs {f.than:g}")
        where = ", ".join(f"{k}={v!r}" for k, v in f.where.items())
        rows.append({
            "claim": f.claim, "paper": f.paper or "-", "metric": r.metric,
            "compared": compared + (f" (where {where})" if where else ""),
            "arm A": _fmt_est(r.metric, r.a), "arm B": _fmt_est(r.metric, r.b) or "-",
            "effect (A - B, or A - value)": _fmt_effect(r.metric, r),
            "verdict": r.verdict, "note": r.note or "-",
        })
        d, ea, eb = r.effect, r.a.estimate, r.b.estimate if r.b else None
        data.append({
            "claim": f.claim, "metric": r.metric, "key": f.key, "arm_a": f.arms[0] if f.arms else "",
            "arm_b": f.arms[1] if f.arms else "", "than": f.than, "expect": f.expect,
            "a_value": ea.value if ea else math.nan, "a_lo": ea.lo if ea else math.nan, "a_hi": ea.hi if ea else math.nan,
            "a_runs": r.a.n_runs, "b_value": eb.value if eb else math.nan, "b_lo": eb.lo if eb else math.nan,
            "b_hi": eb.hi if eb else math.nan, "b_runs": r.b.n_runs if r.b else 0,
            "effect": d.effect if d else math.nan, "effect_lo": d.lo if d else math.nan,
            "effect_hi": d.hi if d else math.nan, "p": d.p if d else math.nan, "method": d.method if d else "",
            "verdict": r.verdict, "note": r.note, "paper": f.paper,
        })
    display = pd.DataFrame(rows).set_index("claim") if rows else pd.DataFrame()
    caption = (f"Intervals at {100 * level:.0f} %. Verdict: reproduced when the whole interval of the effect lies "
               "on the side the claim expects, refuted when it lies on the other, inconclusive when it spans 0. "
               "WER: utterance bootstrap pooled over seeds, paired between arms; steps and accuracies: t intervals "
               "across seeds, Welch difference with a permutation p; rates: exact binomial, Newcombe difference with "
               "Fisher's p.")
    return Table("findings", "Findings", caption, display, pd.DataFrame(data))
