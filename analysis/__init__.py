"""Analysis of tracked studies: MLflow runs -> DataFrames -> tables, figures and an HTML report.

    >>> from analysis import load_runs, write_report
    >>> runs = load_runs("studies/quickstart.yaml")  # doctest: +SKIP
    >>> write_report("studies/quickstart.yaml")  # doctest: +SKIP

Modules: :mod:`analysis.data` (MLflow access), :mod:`analysis.paper` (published numbers),
:mod:`analysis.bootstrap` (WER intervals), :mod:`analysis.stats` (intervals across seeds, paired tests),
:mod:`analysis.findings` (a study's claims tested), :mod:`analysis.replicates` (arms over seeds),
:mod:`analysis.tables`, :mod:`analysis.figures`, :mod:`analysis.report`. Analysis only reads what the tracker wrote; it never trains or decodes.
"""
from analysis.bootstrap import WERInterval, bootstrap_wer
from analysis.data import load_histories, load_runs, load_transcripts, missing_cells
from analysis.report import write_report

__all__ = [
    "WERInterval", "bootstrap_wer", "load_histories", "load_runs", "load_transcripts", "missing_cells", "write_report",
]
