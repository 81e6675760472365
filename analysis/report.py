"""One self-contained HTML report of a study, plus its tables and figures as files.

``write_report`` reads the study's runs from MLflow, computes bootstrap intervals from the
transcripts, draws every figure that applies, renders the tables beside the paper's numbers and
writes::

    <out_dir>/report.html           findings, figures embedded (base64 PNG), tables, study YAML, missing cells
    <out_dir>/tables/*.md|.tex|.csv  findings.* when the study declares findings (analysis.findings),
                                    replicates.* when it has seeds (analysis.replicates)
    <out_dir>/figures/*.png|.svg
    <out_dir>/runs.csv              the runs DataFrame (one row per cell run)

then logs those files under ``report/`` of the study's parent MLflow run::

    >>> from analysis.report import write_report
    >>> write_report("studies/quickstart.yaml", tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    PosixPath('reports/quickstart/report.html')
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
from pathlib import Path

import pandas as pd

from analysis import data, figures, findings, replicates, tables
from harness.experiments.study import REPLICATE_KEY, Study

log = logging.getLogger("analysis.report")

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #666; } .warn { color: #a33; }
table.results { border-collapse: collapse; margin: 1em 0 .4em; font-size: 12.5px; }
table.results caption { caption-side: top; text-align: left; padding-bottom: .3em; }
table.results caption span { color: #555; font-size: 12px; }
table.results th, table.results td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
table.results th:first-child, table.results td:first-child { text-align: left; }
table.results thead th { background: #f3f3f3; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 13px; max-width: 900px; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: 12px; }
ul.skipped li { color: #666; }
"""


def _img(path: Path, alt: str) -> str:
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def _missing_html(missing: pd.DataFrame, n_cells: int) -> str:
    if missing.empty:
        return f"<p>All {n_cells} cells of the study have a finished run.</p>"
    items = []
    for r in missing.to_dict("records"):
        err = f": <code>{html.escape(str(r['error']))}</code>" if r.get("error") else ""
        rid = f" (run {html.escape(r['run_id'])})" if r.get("run_id") else ""
        items.append(f"<li><b>{html.escape(str(r['run_name']))}</b> [{html.escape(r['cell_hash'][:12])}] — "
                     f"{html.escape(str(r['state']))}{rid}{err}</li>")
    return (f'<p class="warn">{len(missing)} of {n_cells} cells have no finished run; the tables and figures '
            f'show the others.</p><ul id="missing-cells">' + "".join(items) + "</ul>")


def build_tables(runs: pd.DataFrame) -> list[tables.Table]:
    """The tables that fit the study: all runs; Table 2 / 4 / 5 shapes when their axes vary; a pivot otherwise.

    Example::

        >>> [t.name for t in build_tables(runs)]  # doctest: +SKIP
        ['runs', 'table2']
    """
    out = [tables.runs_table(runs)]
    fin = runs[runs["status"] == "FINISHED"] if len(runs) else runs
    if fin.empty:
        return out
    varying = figures._varying(fin, figures._axes_of(runs))
    model_axes = {"encoder.name", "llm.name"}
    extra = [a for a in varying if a not in model_axes]
    try:
        if {"encoder.name", "llm.name"} <= set(varying):
            out.append(tables.table2(runs))
        elif "llm.name" in varying and not extra:
            out.append(tables.table4(runs))
        elif "encoder.name" in varying and not extra:
            out.append(tables.table5(runs))
        elif len(varying) == 2:
            out.append(tables.pivot(runs, varying[0], varying[1]))
        elif len(varying) == 1:
            out.append(tables.pivot(runs, varying[0]))
    except ValueError as e:  # an ambiguous grid: the runs table already shows every run
        log.info("no grid table: %s", e)
    return out


def write_report(
    study_path: str | Path | Study,
    *,
    out_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    log_to_mlflow: bool = True,
    n_resamples: int = 2000,
) -> Path:
    """Write the study's HTML report (and tables, figures) into ``out_dir``; returns the HTML path.

    ``out_dir`` defaults to ``reports/<study name>/``. The files written are also logged as
    artifacts under ``report/`` of the study's parent run (``harness.kind=study``) unless
    ``log_to_mlflow`` is False or the study has never run.

    Example::

        >>> path = write_report("studies/quickstart.yaml", out_dir="reports/qs")  # doctest: +SKIP
    """
    study = data.as_study(study_path)
    out = Path(out_dir) if out_dir is not None else Path("reports") / study.name
    fig_dir, tab_dir = out / "figures", out / "tables"
    out.mkdir(parents=True, exist_ok=True)
    uri = data.tracking_uri_of(tracking_uri)

    runs = data.load_runs(study, tracking_uri=uri)
    runs = tables.add_intervals(runs, tracking_uri=uri, n_resamples=n_resamples) if len(runs) else runs
    histories = data.load_histories(study, tracking_uri=uri, runs=runs)
    missing = data.missing_cells(study, runs)

    written: list[Path] = []
    table_list = build_tables(runs)
    lead = _finding_tables(study, runs, histories, uri, n_resamples)
    for t in lead:
        written += list(t.save(tab_dir).values())
    for t in table_list:
        written += list(t.save(tab_dir).values())
    figs = figures.all_figures(runs, histories, out_dir=fig_dir) if len(runs) else []
    for f in figs:
        written += f.paths
    runs_csv = out / "runs.csv"
    runs.to_csv(runs_csv, index=False)
    written.append(runs_csv)

    page = out / "report.html"
    page.write_text(_page(study, runs, missing, lead, table_list, figs), encoding="utf-8")
    written.append(page)

    if log_to_mlflow:
        _log_to_parent(study, uri, out, written)
    return page


def _page(study: Study, runs: pd.DataFrame, missing: pd.DataFrame, lead: list[tables.Table],
          table_list: list[tables.Table], figs: list[figures.FigureResult]) -> str:
    """The HTML page: the findings tables (``lead``), the other tables, figures, the paper, the study file."""
    drawn = [f for f in figs if not f.skipped]
    skipped = [f for f in figs if f.skipped]
    n_done = int((runs["status"] == "FINISHED").sum()) if len(runs) else 0
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Study report: {html.escape(study.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Study: {html.escape(study.name)}</h1>",
        f"<p>{html.escape(study.description)}</p>" if study.description else "",
        f'<p class="meta">Experiment <code>{html.escape(study.experiment)}</code>; {len(study.cells)} cells, '
        f"{n_done} finished; generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.</p>",
        "<h2>Cells without a finished run</h2>", _missing_html(missing, len(study.cells)),
        *(["<h2>Findings</h2>", *[t.to_html() for t in lead]] if lead else []),
        "<h2>Tables</h2>",
        *[t.to_html() for t in table_list],
        "<h2>Figures</h2>",
    ]
    for f in drawn:
        parts.append(f'<figure id="fig-{html.escape(f.name)}">{_img(f.png, f.title)}'
                     f"<figcaption><b>{html.escape(f.title)}.</b> {html.escape(f.caption)}</figcaption></figure>")
    if not drawn:
        parts.append("<p>No figure applies yet (no runs with curves or WERs).</p>")
    if skipped:
        parts.append('<p>Not drawn:</p><ul class="skipped">' + "".join(
            f"<li>{html.escape(f.title)}: {html.escape(f.skipped)}</li>" for f in skipped) + "</ul>")
    parts += [
        "<h2>Published numbers</h2>",
        "<p>The paper's WER tables as published, for reference (LibriSpeech test-clean / test-other, %).</p>",
        *[tables.paper_table(n).to_html() for n in (2, 4, 5)],
        "<details><summary>Tables 3, 6, 8 and 9 (perplexity; non-LLM and other LLM-based systems)</summary>",
        *[tables.paper_table(n).to_html() for n in (3, 6, 8, 9)],
        "</details>",
        "<h2>Study file</h2>", f"<pre>{html.escape(study.path.read_text())}</pre>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _finding_tables(study: Study, runs: pd.DataFrame, histories: pd.DataFrame, uri: str,
                    n_resamples: int) -> list[tables.Table]:
    """The findings table when the study declares findings, the arms-over-seeds table when it has replicates."""
    out = []
    if study.findings:
        out.append(findings.findings_table(findings.evaluate_findings(study, runs=runs, tracking_uri=uri,
                                                                      n_resamples=n_resamples)))
    if REPLICATE_KEY in study.axis_keys and len(runs):
        out.append(replicates.replicates_table(runs, histories, tracking_uri=uri, n_resamples=n_resamples))
    return out


def _log_to_parent(study: Study, uri: str, out: Path, files: list[Path]) -> None:
    """Log exactly the files written now (not whatever else lies in out_dir) under report/ of the parent run."""
    parent = data.study_parent_run(study, tracking_uri=uri)
    if parent is None:
        log.warning("study %s has no parent run in %s yet; the report is not logged to MLflow", study.name, uri)
        return
    client = data.make_client(uri)
    for f in files:
        rel = f.relative_to(out).parent.as_posix()
        client.log_artifact(parent.info.run_id, str(f), "report" if rel == "." else f"report/{rel}")
