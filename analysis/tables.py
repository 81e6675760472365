"""Tables from a study's runs, beside the paper's numbers: Markdown, LaTeX, CSV and HTML.

Every table takes the DataFrame of :func:`analysis.data.load_runs`. WERs are shown in percent with
their 95% bootstrap interval when :func:`add_intervals` has been applied (it reads each run's
per-utterance transcripts), and the paper's number sits beside ours where the paper has one for
the same encoder, LLM and recipe (:func:`add_paper`)::

    >>> from analysis import data, tables
    >>> runs = tables.add_intervals(data.load_runs("studies/paper_table2_encoder_x_llm.yaml"))  # doctest: +SKIP
    >>> t = tables.table2(runs)  # doctest: +SKIP
    >>> print(t.to_markdown())  # doctest: +SKIP
    >>> t.save("reports/paper_table2/tables")  # doctest: +SKIP

A table is a :class:`Table`: ``display`` (formatted strings, what Markdown/LaTeX/HTML show) and
``data`` (the numbers, what the CSV holds).
"""
from __future__ import annotations

import html
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import paper
from analysis.bootstrap import bootstrap_wer
from analysis.labels import DASH, axis_label, axis_labels, hashable, missing

log = logging.getLogger("analysis.tables")

_TEST_WER = re.compile(r"^test/(.+)/wer$")


# ----------------------------------------------------------------------------------------------
# Table: one object, four renderings


@dataclass
class Table:
    """A titled table: ``display`` (strings, index = row labels) and ``data`` (numbers, for CSV)."""

    name: str
    title: str
    caption: str
    display: pd.DataFrame
    data: pd.DataFrame

    def _frame(self) -> tuple[list[str], list[list[str]]]:
        index_name = self.display.index.name or ""
        header = [index_name] + [str(c) for c in self.display.columns]
        body = [[str(i)] + [str(v) for v in row] for i, row in zip(self.display.index, self.display.to_numpy())]
        return header, body

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table with its title and caption."""
        esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
        header, body = self._frame()
        lines = [f"**{self.title}**", "", "| " + " | ".join(esc(h) for h in header) + " |",
                 "| " + " | ".join("---" for _ in header) + " |"]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
        if self.caption:
            lines += ["", self.caption]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A ``table`` float with a ``tabular`` (booktabs rules), caption and label."""
        header, body = self._frame()
        cols = "l" + "r" * (len(header) - 1)
        lines = [
            "\\begin{table}[t]", "\\centering", f"\\caption{{{_latex(self.title)}. {_latex(self.caption)}}}",
            f"\\label{{tab:{self.name}}}", f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
            " & ".join(_latex(h) for h in header) + " \\\\", "\\midrule",
        ]
        lines += [" & ".join(_latex(c) for c in row) + " \\\\" for row in body]
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """An HTML ``<table>`` with a ``<caption>`` (escaped; no external resources)."""
        header, body = self._frame()
        out = [f'<table class="results" id="table-{html.escape(self.name)}">',
               f"<caption><b>{html.escape(self.title)}</b>"
               + (f"<br><span>{html.escape(self.caption)}</span>" if self.caption else "") + "</caption>",
               "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"]
        out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
        out.append("</tbody></table>")
        return "\n".join(out)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``<name>.md``, ``<name>.tex`` and ``<name>.csv`` into ``out_dir``; returns the paths by format."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"md": out / f"{self.name}.md", "tex": out / f"{self.name}.tex", "csv": out / f"{self.name}.csv"}
        paths["md"].write_text(self.to_markdown())
        paths["tex"].write_text(self.to_latex())
        self.data.to_csv(paths["csv"], index=False)
        return paths


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "—": "---", "–": "--", "≠": r"$\neq$", "×": r"$\times$"}


def _latex(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


# ----------------------------------------------------------------------------------------------
# Formatting




def fmt_count(n: Any) -> str:
    """Parameter counts as the paper prints them: ``17305600`` -> ``17.31M``, ``1.1e9`` -> ``1.10B``."""
    if missing(n):
        return DASH
    n = float(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def fmt_wer(wer: Any, lo: Any = None, hi: Any = None) -> str:
    """A WER fraction in percent with its interval: ``0.0301, 0.028, 0.032`` -> ``3.01 [2.80, 3.20]``."""
    if missing(wer):
        return DASH
    text = f"{100 * wer:.2f}"
    if not missing(lo) and not missing(hi):
        text += f" [{100 * lo:.2f}, {100 * hi:.2f}]"
    return text


def fmt_value(v: Any) -> str:
    """Any cell value: integers with thousands separators, floats to 4 significant digits."""
    if missing(v):
        return DASH
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


# ----------------------------------------------------------------------------------------------
# Columns added to the runs DataFrame


def test_splits(runs: pd.DataFrame) -> list[str]:
    """Test split names with a logged WER, the paper's two first (``test-clean``, ``test-other``)."""
    names = [m.group(1) for c in runs.columns if (m := _TEST_WER.match(str(c)))]
    rank = {s: i for i, s in enumerate(paper.SPLITS)}
    return sorted(dict.fromkeys(names), key=lambda s: (rank.get(s, len(rank)), s))


def add_intervals(
    runs: pd.DataFrame,
    *,
    tracking_uri: str | None = None,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Copy of ``runs`` with ``ci/<split>/lo`` and ``ci/<split>/hi`` (fractions) for every finished run and split.

    The interval is the utterance-level bootstrap of :func:`analysis.bootstrap.bootstrap_wer` over
    the run's ``transcripts/<split>.json``; a run without that table keeps NaN (with a warning).

    Example::

        >>> runs = add_intervals(load_runs("studies/quickstart.yaml"))  # doctest: +SKIP
        >>> runs[["run_name", "test/synth-test/wer", "ci/synth-test/lo", "ci/synth-test/hi"]]  # doctest: +SKIP
    """
    from analysis.data import load_transcripts

    out = runs.copy()
    uri = tracking_uri or runs.attrs.get("tracking_uri")
    for split in test_splits(runs):
        lo, hi = np.full(len(out), np.nan), np.full(len(out), np.nan)
        for i, (run_id, status, wer) in enumerate(zip(out["run_id"], out["status"], out[f"test/{split}/wer"])):
            if status != "FINISHED" or missing(wer):
                continue
            try:
                t = load_transcripts(run_id, split, tracking_uri=uri)
            except FileNotFoundError as e:
                log.warning("%s; no interval", e)
                continue
            if t["ref_words"].sum() == 0:
                continue
            ci = bootstrap_wer(t["errors"], t["ref_words"], n_resamples=n_resamples, level=level, seed=seed)
            if not math.isclose(ci.wer, wer, rel_tol=1e-6, abs_tol=1e-9):
                log.warning("run %s %s: transcripts give WER %.4f but the logged metric is %.4f",
                            run_id, split, ci.wer, wer)
            lo[i], hi[i] = ci.lo, ci.hi
        out[f"ci/{split}/lo"], out[f"ci/{split}/hi"] = lo, hi
    out.attrs.update(runs.attrs, ci_level=level)
    return out


def _run_config(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not missing(v)}


def add_paper(runs: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``runs`` with ``paper/<split>/wer`` (fraction) and ``paper/source`` where the paper has a number.

    A run gets the paper's number only when its encoder and LLM are checkpoints the paper names and
    it follows the paper's recipe (:data:`analysis.paper.RECIPE`); the paper only has test-clean
    and test-other.
    """
    out = runs.copy()
    splits = [s for s in test_splits(runs) if s in paper.SPLITS]
    found = []
    for row in out.to_dict("records"):
        enc, llm = row.get("encoder.name"), row.get("llm.name")
        ok = isinstance(enc, str) and isinstance(llm, str) and paper.follows_recipe(_run_config(row))
        found.append(paper.published_wer(enc, llm) if ok else None)
    for split in splits:
        out[f"paper/{split}/wer"] = [p.for_split(split) / 100 if p else np.nan for p in found]
    out["paper/source"] = [p.source if p else "" for p in found]
    out.attrs.update(runs.attrs)
    return out


# ----------------------------------------------------------------------------------------------
# Trainable parameters against the projector formula


@lru_cache(maxsize=None)
def model_width(reference: str, *, kind: str) -> int | None:
    """Output width of an encoder (d_enc) or LLM (d_llm) reference, or None when it cannot be known here
    (for runs logged before training logged ``model/d_enc`` and ``model/d_llm`` itself).

    Order: the paper's tables; a ``tiny:`` model built from its config (milliseconds); the
    ``config.json`` of a local ``pack:`` folder or a cached ``hf:`` checkpoint (never a download).

    Example::

        >>> model_width("hf:openai/whisper-large-v2", kind="encoder")
        1280
    """
    if kind not in ("encoder", "llm"):
        raise ValueError(f"kind must be 'encoder' or 'llm', got {kind!r}")
    if (known := paper.hidden_size(reference)) is not None:
        return known
    try:
        from harness.models.sources import TINY_ENCODERS, TINY_LLMS, Reference

        ref = Reference.parse(reference)
        if ref.scheme == "tiny":
            model, _ = (TINY_ENCODERS if kind == "encoder" else TINY_LLMS).get(ref.target)()
            config = model.config
        else:
            from transformers import AutoConfig

            if ref.scheme == "pack":
                from harness import packs

                folder = str(packs.pack_path(ref.target, convert=False))
            else:
                folder = ref.target
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
        if kind == "llm":  # multimodal configs keep the language model's width in text_config
            config = getattr(config, "text_config", None) or config
        width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        return int(width) if width else None
    except Exception as e:  # noqa: BLE001 - any failure means "unknown here", reported as such
        log.info("width of %s unknown: %s", reference, e)
        return None


def _logged_width(run: Any, key: str) -> int | None:
    """A width the run logged when it built its model (runs before it was logged: None)."""
    value = run.get(key)
    return None if missing(value) else int(value)


def check_parameters(runs: pd.DataFrame) -> pd.DataFrame:
    """Measured parameter counts against the linear projector formula ``k*d_enc*H + H + H*d_llm + d_llm``.

    Returns a frame aligned with ``runs``: ``d_enc``, ``d_llm``, ``projector_formula``,
    ``params_ok`` (True, False, or None when it cannot be checked) and ``params_check`` (text):
    ``ok``; ``MISMATCH ...`` when ``params/projector`` differs from the formula, or when
    ``params/trainable`` does with a frozen encoder and no LoRA (something else is training);
    ``ok (+N encoder)`` / ``ok (+N LoRA)`` when those train too; ``n/a ...`` otherwise.

    Example::

        >>> check_parameters(load_runs("studies/quickstart.yaml"))[["params_check"]]  # doctest: +SKIP
    """
    rows = []
    for r in runs.to_dict("records"):
        out: dict[str, Any] = {"d_enc": None, "d_llm": None, "projector_formula": None, "params_ok": None}
        projector, k, hidden = r.get("adapter.projector"), r.get("adapter.k"), r.get("adapter.hidden")
        measured_proj, trainable = r.get("params/projector"), r.get("params/trainable")
        if projector != "linear":
            out["params_check"] = f"n/a ({projector} projector)"
        elif missing(measured_proj) or missing(trainable):
            out["params_check"] = "n/a (no parameter counts logged)"
        else:
            d_enc = _logged_width(r, "model/d_enc") or (
                model_width(r["encoder.name"], kind="encoder") if isinstance(r.get("encoder.name"), str) else None)
            d_llm = _logged_width(r, "model/d_llm") or (
                model_width(r["llm.name"], kind="llm") if isinstance(r.get("llm.name"), str) else None)
            out.update(d_enc=d_enc, d_llm=d_llm)
            if d_enc is None or d_llm is None or missing(k) or missing(hidden):
                out["params_check"] = "n/a (model widths unknown here)"
            else:
                formula = paper.projector_params(d_enc=d_enc, d_llm=d_llm, k=int(k), hidden=int(hidden))
                out["projector_formula"] = formula
                extra = int(trainable) - formula
                if int(measured_proj) != formula:
                    out.update(params_ok=False,
                               params_check=f"MISMATCH: projector {int(measured_proj):,} ≠ formula {formula:,}")
                elif r.get("encoder.trainable") is True and extra > 0:
                    out.update(params_ok=True, params_check=f"ok (+{fmt_count(extra)} encoder)")
                elif r.get("llm.lora.enabled") is True and extra > 0:
                    out.update(params_ok=True, params_check=f"ok (+{fmt_count(extra)} LoRA)")
                elif extra != 0:
                    out.update(params_ok=False,
                               params_check=f"MISMATCH: trainable {int(trainable):,} ≠ formula {formula:,}")
                else:
                    out.update(params_ok=True, params_check="ok")
        rows.append(out)
    columns = ["d_enc", "d_llm", "projector_formula", "params_ok", "params_check"]
    return pd.DataFrame(rows, index=runs.index, columns=columns)


# ----------------------------------------------------------------------------------------------
# Shared pieces of the tables


def _prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """Paper columns added once (intervals only if the caller added them: they need the store)."""
    return runs if "paper/source" in runs.columns else add_paper(runs)


def _wer_cells(row: dict[str, Any], splits: Sequence[str]) -> list[str]:
    return [fmt_wer(row.get(f"test/{s}/wer"), row.get(f"ci/{s}/lo"), row.get(f"ci/{s}/hi")) for s in splits]


def _paper_cell(row: dict[str, Any], splits: Sequence[str]) -> str:
    vals = [row.get(f"paper/{s}/wer") for s in splits]
    if all(missing(v) for v in vals):
        return ""
    return " / ".join(DASH if missing(v) else f"{100 * v:.2f}" for v in vals)


def _wer_numbers(row: dict[str, Any], splits: Sequence[str]) -> dict[str, float]:
    """The CSV's numeric WER columns (percent): ours, interval and the paper's, per split."""
    out = {}
    for s in splits:
        for key, col in ((f"test/{s}/wer", f"{s} WER %"), (f"ci/{s}/lo", f"{s} CI lo %"),
                         (f"ci/{s}/hi", f"{s} CI hi %"), (f"paper/{s}/wer", f"{s} paper WER %")):
            v = row.get(key)
            out[col] = np.nan if missing(v) else 100 * float(v)
    return out


def _ci_note(runs: pd.DataFrame) -> str:
    level = runs.attrs.get("ci_level")
    has_ci = any(str(c).startswith("ci/") for c in runs.columns)
    return f"[{100 * level:.0f}% bootstrap CI over utterances]" if has_ci and level else ""


def _split_header(splits: Sequence[str]) -> str:
    return " / ".join(splits) if splits else "no test split"


def _finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "FINISHED"] if "status" in runs.columns else runs


# ----------------------------------------------------------------------------------------------
# Tables


def pivot(
    runs: pd.DataFrame,
    rows: str,
    cols: str | None = None,
    *,
    value: str = "wer",
    splits: Sequence[str] | None = None,
    with_paper: bool = True,
    name: str | None = None,
    title: str | None = None,
) -> Table:
    """Any study as a grid: one axis down, one across (or none), finished runs' ``value`` in the cells.

    ``value="wer"`` shows every test split's WER (%) joined by `` / `` (as the paper prints
    clean / other), with intervals when present, and adds a ``(paper)`` column beside each
    column that has published numbers. Any other ``value`` is a column of ``runs``
    (``emergence_step``, ``params/trainable``, ...). Cells of failed runs read ``failed``; cells
    without a run read ``—``. When another config field varies within one cell the pivot would
    hide it, so a ValueError names the field (filter ``runs`` first).

    Example::

        >>> print(pivot(runs, "encoder.name", "llm.name").to_markdown())  # doctest: +SKIP
        >>> pivot(runs[runs["adapter.k"] == 5], "encoder.name", value="emergence_step")  # doctest: +SKIP
    """
    for key in (rows, cols):
        if key is not None and key not in runs.columns:
            raise KeyError(f"pivot: {key!r} is not a column of the runs (axes: {runs.attrs.get('axes')})")
    if value != "wer" and value not in runs.columns:
        raise KeyError(f"pivot: value {value!r} is not a column of the runs")
    runs = _prepare(runs)
    splits = list(splits) if splits is not None else test_splits(runs)
    keys = [rows] + ([cols] if cols else [])
    live = runs[runs["status"].isin(["FINISHED", "FAILED"])] if "status" in runs.columns else runs
    groups = live.groupby([live[k].map(hashable) for k in keys], sort=False, dropna=False)
    _check_unambiguous(runs, live, groups, rows, cols)

    row_vals = list(dict.fromkeys(live[rows].map(hashable)))
    col_vals = list(dict.fromkeys(live[cols].map(hashable))) if cols else [None]
    first = {k: v for k, v in zip(live[rows].map(hashable), live[rows])}
    firstc = {k: v for k, v in zip(live[cols].map(hashable), live[cols])} if cols else {None: None}
    cell = {tuple(g if isinstance(g, tuple) else (g,)): df.iloc[0].to_dict() for g, df in groups}

    display_rows, data_rows = [], []
    col_labels = axis_labels(cols, [firstc[c] for c in col_vals]) if cols else ["WER (%)" if value == "wer" else value]
    row_labels = axis_labels(rows, [first[r] for r in row_vals])
    paper_cols = {c for c in col_vals for r in row_vals
                  if with_paper and value == "wer" and (run := cell.get((r, c) if cols else (r,)))
                  and _paper_cell(run, splits)}
    for r in row_vals:
        drow: dict[str, str] = {}
        for c, label in zip(col_vals, col_labels):
            run = cell.get((r, c) if cols else (r,))
            if run is None:
                text = DASH
            elif run.get("status", "FINISHED") != "FINISHED":
                text = "failed"
            elif value == "wer":
                text = " / ".join(_wer_cells(run, splits)) if splits else DASH
            else:
                text = fmt_value(run.get(value))
            drow[label] = text
            if c in paper_cols:
                drow[f"{label} (paper)"] = (_paper_cell(run, splits) or DASH) if run else DASH
            if run is not None:
                numbers = _wer_numbers(run, splits) if value == "wer" else {value: run.get(value)}
                data_rows.append({rows: first[r], **({cols: firstc[c]} if cols else {}),
                                  "run_name": run.get("run_name"),
                                  "run_id": run.get("run_id"), "status": run.get("status"), **numbers})
        display_rows.append(drow)
    display = pd.DataFrame(display_rows, index=pd.Index(row_labels, name=rows))
    what = f"WER (%) on {_split_header(splits)} {_ci_note(runs)}".strip() if value == "wer" else value
    caption = f"{what}; rows: {rows}" + (f", columns: {cols}" if cols else "") + (
        "; '(paper)': published WER for the same encoder, LLM and recipe" if paper_cols else "")
    return Table(
        name or f"pivot_{_slug(rows)}" + (f"_x_{_slug(cols)}" if cols else ""),
        title or f"{what.split(' [')[0]} by {rows}" + (f" × {cols}" if cols else ""),
        caption, display, pd.DataFrame(data_rows),
    )


def _check_unambiguous(runs: pd.DataFrame, live: pd.DataFrame, groups, rows: str, cols: str | None) -> None:
    """A pivot cell holds one run: when several share one, name the field that tells them apart."""
    if not any(len(df) > 1 for _, df in groups):
        return
    keys = [rows] + ([cols] if cols else [])
    varying = [a for a in runs.attrs.get("axes", []) if a not in keys and a in live.columns
               and live[a].map(hashable).nunique(dropna=False) > 1]
    raise ValueError(
        f"pivot({rows!r}, {cols!r}) is ambiguous: several runs share a cell (other varying fields: "
        f"{varying or 'unknown'}); select one value first, e.g. runs[runs[{(varying or ['...'])[0]!r}] == ...]"
    )


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def table2(runs: pd.DataFrame) -> Table:
    """Paper Table 2's shape: encoder rows x LLM columns, WER (%) on test-clean / test-other, paper beside.

    Example::

        >>> runs = add_intervals(load_runs("studies/paper_table2_encoder_x_llm.yaml"))  # doctest: +SKIP
        >>> print(table2(runs).to_markdown())  # doctest: +SKIP
    """
    return pivot(runs, "encoder.name", "llm.name", value="wer", name="table2",
                 title="Table 2 — speech encoder × LLM: WER (%)")


def _model_table(
    runs: pd.DataFrame, *, by: str, kind: str, paper_row: Callable[[str], paper.ModelRow | None], name: str, title: str
) -> Table:
    runs = _prepare(runs)
    fin = _finished(runs)
    splits = test_splits(runs)
    checks = check_parameters(fin)
    width_col = "d_llm" if kind == "llm" else "d_enc"
    labels = [axis_label(by, v) for v in fin[by]]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    display_rows, data_rows, index = [], [], []
    for (_, r), (_, chk), label in zip(fin.iterrows(), checks.iterrows(), labels):
        r = r.to_dict()
        prow = paper_row(r[by]) if isinstance(r[by], str) else None
        recipe = paper.follows_recipe(_run_config(r))
        index.append(f"{label} ({r['run_name']})" if label in dup else label)
        d = {
            "params": fmt_count(r.get(f"params/{kind}")),
            "hidden": fmt_value(chk[width_col]),
            "projector": fmt_count(r.get("params/projector")),
            "trainable": fmt_count(r.get("params/trainable")),
            "params check": chk["params_check"],
        }
        for s, text in zip(splits, _wer_cells(r, splits)):
            d[f"WER {s} (%)"] = text
        d["paper params"] = fmt_count(prow.params) if prow else ""
        d["paper projector"] = fmt_count(prow.projector_params) if prow and recipe else ""
        d["paper WER"] = _paper_cell(r, splits)
        display_rows.append(d)
        data_rows.append({
            by: r[by], "run_name": r["run_name"], "run_id": r["run_id"],
            f"params/{kind}": r.get(f"params/{kind}"), width_col: chk[width_col],
            "params/projector": r.get("params/projector"), "params/trainable": r.get("params/trainable"),
            "projector_formula": chk["projector_formula"], "params_ok": chk["params_ok"],
            **_wer_numbers(r, splits),
            "paper params": prow.params if prow else np.nan,
            "paper projector": prow.projector_params if prow and recipe else np.nan,
        })
    display = pd.DataFrame(display_rows, index=pd.Index(index, name="LLM" if kind == "llm" else "encoder"))
    # Paper columns only when at least one row has a published number.
    for col in ("paper params", "paper projector", "paper WER"):
        if col in display.columns and (display[col] == "").all():
            display = display.drop(columns=col)
    caption = (f"finished runs; params, projector and trainable as measured (params/*); params check: trainable "
               f"count against k·d_enc·H + H + H·d_llm + d_llm; WER {_ci_note(runs)}").strip()
    return Table(name, title, caption, display, pd.DataFrame(data_rows))


def table4(runs: pd.DataFrame) -> Table:
    """Paper Table 4's shape: one row per LLM with its params, hidden size, projector params and WER, paper beside.

    Example::

        >>> print(table4(load_runs("studies/paper_table4_llms.yaml")).to_markdown())  # doctest: +SKIP
    """
    return _model_table(runs, by="llm.name", kind="llm", paper_row=paper.table4_row, name="table4",
                        title="Table 4 — LLMs: parameters and WER (%)")


def table5(runs: pd.DataFrame) -> Table:
    """Paper Table 5's shape: one row per speech encoder with its params, hidden size, projector params and WER.

    Example::

        >>> print(table5(load_runs("studies/paper_table5_encoders.yaml")).to_markdown())  # doctest: +SKIP
    """
    return _model_table(runs, by="encoder.name", kind="encoder", paper_row=paper.table5_row, name="table5",
                        title="Table 5 — speech encoders: parameters and WER (%)")


def runs_table(runs: pd.DataFrame) -> Table:
    """One row per run of the study (finished or not): state, WER per split with CI, paper, parameters, emergence.

    Example::

        >>> print(runs_table(load_runs("studies/quickstart.yaml")).to_markdown())  # doctest: +SKIP
    """
    runs = _prepare(runs)
    splits = test_splits(runs)
    checks = check_parameters(runs)
    display_rows, data_rows = [], []
    for (_, r), (_, chk) in zip(runs.iterrows(), checks.iterrows()):
        r = r.to_dict()
        d = {"state": r.get("state", "")}
        for s, text in zip(splits, _wer_cells(r, splits)):
            d[f"WER {s} (%)"] = text
        d["paper WER"] = _paper_cell(r, splits)
        d["trainable"] = fmt_count(r.get("params/trainable"))
        d["params check"] = chk["params_check"]
        d["emergence step"] = fmt_value(r.get("emergence_step")) if r.get("emerged") == 1 else (
            "none" if r.get("emerged") == 0 else DASH)
        d["steps"] = fmt_value(r.get("train/steps"))
        secs = r.get("train/wall_seconds")
        d["train time (s)"] = DASH if missing(secs) else f"{secs:.1f}" if secs < 10 else f"{secs:,.0f}"
        display_rows.append(d)
        data_rows.append({
            "run_name": r["run_name"], "run_id": r["run_id"], "cell_hash": r.get("cell_hash"),
            "status": r.get("status"),
            **{a: r.get(a) for a in runs.attrs.get("axes", []) if a in r},
            **_wer_numbers(r, splits), "params/trainable": r.get("params/trainable"),
            "projector_formula": chk["projector_formula"], "params_ok": chk["params_ok"],
            "emergence_step": r.get("emergence_step"), "train/steps": r.get("train/steps"),
            "train/wall_seconds": r.get("train/wall_seconds"),
        })
    display = pd.DataFrame(display_rows, index=pd.Index(list(runs["run_name"]), name="run"))
    if "paper WER" in display.columns and (display["paper WER"] == "").all():
        display = display.drop(columns="paper WER")
    caption = f"every run of the study; WER (%) {_ci_note(runs)}".strip()
    caption += "; emergence step as logged (harness.run.emergence)"
    return Table("runs", "All runs", caption, display, pd.DataFrame(data_rows))


def paper_table(number: int) -> Table:
    """One of the paper's WER tables (2, 3, 4, 5, 6, 8, 9) exactly as published, for reference.

    Example::

        >>> paper_table(4).display.loc["Vicuna-7B-v1.5", "WER (%)"]
        '2.58 / 6.47'
    """
    pair = lambda w: f"{w.clean:g} / {w.other:g}" if w else ""  # noqa: E731
    if number == 2:
        d = pd.DataFrame({llm: [f"{paper.TABLE2[(e, llm)].clean:.2f} / {paper.TABLE2[(e, llm)].other:.2f}"
                                for e in paper.WHISPER] for llm in paper.TABLE2_LLMS},
                         index=pd.Index(paper.WHISPER, name="encoder"))
    elif number == 3:
        d = pd.DataFrame({"PPL": [f"{r.ppl_clean:.2f} / {r.ppl_other:.2f}" for r in paper.TABLE3],
                          "WER (%)": [f"{r.wer.clean:.2f} / {r.wer.other:.2f}" for r in paper.TABLE3]},
                         index=pd.Index([r.llm for r in paper.TABLE3], name="LLM"))
    elif number in (4, 5):
        rows = paper.TABLE4 if number == 4 else paper.TABLE5
        d = pd.DataFrame({"params": [fmt_count(r.params) for r in rows], "hidden": [str(r.hidden) for r in rows],
                          "projector params": [fmt_count(r.projector_params) for r in rows],
                          "WER (%)": [f"{r.wer.clean:.2f} / {r.wer.other:.2f}" for r in rows]},
                         index=pd.Index([r.name for r in rows], name="LLM" if number == 4 else "encoder"))
    elif number == 6:
        d = pd.DataFrame({"WER (%)": [pair(w) for w, _ in paper.TABLE6.values()],
                          "with in-domain LM": [pair(lm) for _, lm in paper.TABLE6.values()]},
                         index=pd.Index(list(paper.TABLE6), name="system"))
    elif number == 8:
        d = pd.DataFrame([{"encoder": r.encoder, "LLM": r.llm, "projector": r.projector, "data": r.data,
                           "WER (%)": pair(r.wer)} for r in paper.TABLE8],
                         index=pd.Index([r.system for r in paper.TABLE8], name="system"))
    elif number == 9:
        d = pd.DataFrame({"WER (%)": [pair(w) for w in paper.TABLE9.values()]},
                         index=pd.Index(list(paper.TABLE9), name="setting"))
    else:
        raise ValueError(f"the paper has WER tables 2, 3, 4, 5, 6, 8 and 9, not {number}")
    data = d.reset_index()
    return Table(f"paper_table{number}", f"Paper Table {number} (published)",
                 "LibriSpeech test-clean / test-other WER (%) as published (AAAI 2025 version)", d, data)
