"""MLflow -> pandas: a study's runs, metric histories and per-utterance transcripts.

Everything here goes through :class:`mlflow.tracking.MlflowClient` (search_runs,
get_metric_history, download_artifacts), so it reads a SQLite file, a folder store or an
``mlflow server`` alike. A study is given as its YAML path or as a loaded
:class:`harness.experiments.study.Study`; runs are matched to the study's cells by the ``harness.cell_hash``
tag, exactly as the runner matches them::

    >>> from analysis.data import load_runs, missing_cells
    >>> runs = load_runs("studies/quickstart.yaml", tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    >>> runs[["run_name", "status", "test/synth-test/wer"]]  # doctest: +SKIP
    >>> missing_cells("studies/quickstart.yaml", runs)  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.config import MOVED
from harness.experiments.grid import cell_status, find_cell_runs
from harness.tracking.store import make_client
from harness.tracking.store import tracking_uri as resolve_tracking_uri
from harness.tracking.tags import CELL_HASH as TAG_HASH
from harness.tracking.tags import KIND as TAG_KIND
from harness.tracking.tags import STUDY as TAG_STUDY
from harness.experiments.study import Study, load_study

log = logging.getLogger("analysis.data")

# Config fields every table may want, whether or not the study varies them.
SELECTED_PARAMS = (
    "encoder.name", "encoder.trainable", "encoder.whisper.input_mode",
    "adapter.projector", "adapter.k", "adapter.hidden",
    "llm.name", "llm.prompt_style", "llm.lora.enabled",
    "train.max_steps", "train.lr", "train.batch_size", "train.seed",
    "decode.beam", "decode.normaliser",
)
_OLD_KEYS = {new: old for old, new in MOVED.items()}  # a stale run of an older version logged the old key
DEFAULT_HISTORY_METRICS = ("train/acc", "train/loss", "dev/acc", "dev/loss", "dev/wer")
RUN_COLUMNS = ("run_id", "run_name", "cell_hash", "status", "state", "in_study")
TRANSCRIPT_COLUMNS = ("id", "reference", "hypothesis", "errors", "ref_words")


def as_study(study: str | Path | Study) -> Study:
    """A :class:`Study` from a path (validated by :func:`harness.experiments.study.load_study`) or itself."""
    return study if isinstance(study, Study) else load_study(study)


def parse_param(text: str | None) -> Any:
    """An MLflow param string back to the Python value it was logged from (``"5"`` -> 5, ``"False"`` -> False).

    MLflow stores ``str(value)``; only the forms :func:`str` produces for the config's scalar types
    are decoded, everything else stays a string::

        >>> parse_param("5"), parse_param("0.0001"), parse_param("False"), parse_param("None"), parse_param("linear")
        (5, 0.0001, False, None, 'linear')
    """
    if text is None or text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _experiment_id(client, study: Study) -> str | None:
    exp = client.get_experiment_by_name(study.experiment)
    return exp.experiment_id if exp else None


def _empty_runs(study: Study) -> pd.DataFrame:
    cols = list(RUN_COLUMNS) + list(dict.fromkeys([*study.axis_keys, *SELECTED_PARAMS])) + ["emergence_step", "error"]
    df = pd.DataFrame(columns=cols)
    df.attrs.update(study=study.name, axes=list(study.axis_keys))
    return df


def load_runs(
    study: str | Path | Study,
    *,
    tracking_uri: str | None = None,
    include_stale: bool = False,
    params: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per cell run of ``study``: ids, status, axis values, selected params, final metrics.

    Columns: ``run_id, run_name, cell_hash, status`` (MLflow's: FINISHED, FAILED, RUNNING, KILLED),
    ``state`` (the runner's: done, failed, running, interrupted), ``in_study`` (the hash is one of
    the study file's cells), one column per axis and per :data:`SELECTED_PARAMS` (plus ``params``)
    holding typed values, every final metric under its MLflow key (``test/<split>/wer`` as a
    fraction, ``params/trainable``, ``emerged``, ...), ``emergence_step`` (NaN when the run did
    not emerge), ``error`` (the ``harness.error`` tag of a failed run), ``start_time``, ``end_time``.
    Rows follow the study's cell order. Runs of cells that are no longer in the study file (the
    file was edited since) are left out unless ``include_stale``.
    ``df.attrs`` holds ``study``, ``axes`` (the axis keys) and ``tracking_uri``.

    Example::

        >>> runs = load_runs("studies/quickstart.yaml")  # doctest: +SKIP
        >>> runs.loc[runs.status == "FINISHED", ["run_name", "test/synth-test/wer"]]  # doctest: +SKIP
    """
    study = as_study(study)
    client = make_client(tracking_uri)
    exp_id = _experiment_id(client, study)
    if exp_id is None:
        log.warning("no MLflow experiment %r at %s: the study has not run yet",
                    study.experiment, tracking_uri_of(tracking_uri))
        return _empty_runs(study)
    by_hash = find_cell_runs(client, exp_id, study.name, study.cells)  # latest run per cell, as the runner sees them
    order = {c.hash: i for i, c in enumerate(study.cells)}
    cells = {c.hash: c for c in study.cells}
    wanted = list(dict.fromkeys([*study.axis_keys, *SELECTED_PARAMS, *params]))
    rows = []
    for h, run in by_hash.items():
        if h not in cells and not include_stale:
            continue
        tags, run_params = run.data.tags, run.data.params
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "cell_hash": h,
            "status": run.info.status,
            "state": cell_status(run),
            "in_study": h in cells,
        }
        cell = cells.get(h)
        for key in wanted:
            if cell is not None:  # same hash, same config: take the typed value from the study file
                row[key] = cell.values[key] if key in cell.values else _config_value(cell, key)
            elif key in run_params or _OLD_KEYS.get(key) in run_params:  # a stale run: what it logged
                row[key] = parse_param(run_params.get(key, run_params.get(_OLD_KEYS.get(key, ""))))
            else:  # a stale run that failed before logging params
                row[key] = parse_param(tags.get(f"axis.{key}"))
        row.update(run.data.metrics)
        row.setdefault("emergence_step", math.nan)
        row["error"] = tags.get("harness.error", "")
        row["start_time"] = pd.to_datetime(run.info.start_time, unit="ms") if run.info.start_time else pd.NaT
        row["end_time"] = pd.to_datetime(run.info.end_time, unit="ms") if run.info.end_time else pd.NaT
        row["_order"] = order.get(h, len(order))
        rows.append(row)
    if not rows:
        return _empty_runs(study)
    df = pd.DataFrame(rows).sort_values(["_order", "start_time"]).drop(columns="_order").reset_index(drop=True)
    df.attrs.update(study=study.name, axes=list(study.axis_keys), tracking_uri=tracking_uri_of(tracking_uri))
    return df


def _config_value(cell, key: str) -> Any:
    """A config field of a study cell (``adapter.k``), or None when unknown."""
    if cell is None:
        return None
    from harness.config import get_path

    try:
        return get_path(cell.config, key)
    except (AttributeError, KeyError):
        return None


def tracking_uri_of(uri: str | None) -> str:
    """The tracking URI that is used for ``uri`` (argument, else ``MLFLOW_TRACKING_URI``, else the default)."""
    return resolve_tracking_uri(uri)


def load_histories(
    study: str | Path | Study,
    metrics: Sequence[str] = DEFAULT_HISTORY_METRICS,
    *,
    tracking_uri: str | None = None,
    runs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every logged value of ``metrics`` for each run of the study, long format.

    Columns: ``run_id, run_name, metric, step, value``, sorted by run (study order), metric, step.
    A step logged twice (the final dev evaluation is logged again with the test metrics) keeps its
    last value. ``runs`` (from :func:`load_runs`) saves searching the store again.

    Example::

        >>> h = load_histories("studies/quickstart.yaml", metrics=["train/acc"])  # doctest: +SKIP
        >>> h.pivot(index="step", columns="run_name", values="value").plot()  # doctest: +SKIP
    """
    study = as_study(study)
    if runs is None:
        runs = load_runs(study, tracking_uri=tracking_uri)
    client = make_client(tracking_uri)
    frames = []
    for run_id, run_name in zip(runs["run_id"], runs["run_name"]):
        for metric in metrics:
            hist = client.get_metric_history(run_id, metric)
            if not hist:
                continue
            frames.append(pd.DataFrame({
                "run_id": run_id, "run_name": run_name, "metric": metric,
                "step": [m.step for m in hist], "value": [m.value for m in hist], "_ts": [m.timestamp for m in hist],
            }))
    if not frames:
        return pd.DataFrame({"run_id": [], "run_name": [], "metric": [], "step": [], "value": []})
    df = pd.concat(frames, ignore_index=True)
    # Stable sort keeps the logging order within a timestamp tie, so "last" is the last logged.
    df = df.sort_values(["run_id", "metric", "step", "_ts"], kind="stable")
    df = df.drop_duplicates(["run_id", "metric", "step"], keep="last").drop(columns="_ts")
    run_order = {r: i for i, r in enumerate(runs["run_id"])}
    df = df.sort_values(["run_id", "metric", "step"], key=lambda s: s.map(run_order) if s.name == "run_id" else s)
    return df.reset_index(drop=True)


def load_transcripts(run_id: str, split: str, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The per-utterance table ``transcripts/<split>.json`` of a run: id, reference, hypothesis, errors, ref_words.

    MLflow's ``log_table`` *appends* to an existing table, so a run whose final evaluation was
    repeated (resumed after a crash in its last step) holds some utterances twice; the last row
    of each id is kept.

    Example::

        >>> t = load_transcripts(run_id, "test-clean")  # doctest: +SKIP
        >>> t.errors.sum() / t.ref_words.sum()  # the run's test/test-clean/wer  # doctest: +SKIP
    """
    client = make_client(tracking_uri)
    artifact = f"transcripts/{split}.json"
    available = [f.path for f in client.list_artifacts(run_id, "transcripts")]
    if artifact not in available:
        names = ", ".join(Path(p).stem for p in available) or "none"
        raise FileNotFoundError(f"run {run_id} has no transcripts table for split {split!r} (splits with one: {names})")
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        path = client.download_artifacts(run_id, artifact, dst_path=tmp)
        # dtype=False: ids such as "1089-134686-0000" must stay strings, not become dates or numbers.
        df = pd.read_json(path, orient="split", dtype=False)
    missing = [c for c in TRANSCRIPT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"run {run_id}: {artifact} lacks columns {missing} (has {list(df.columns)})")
    before = len(df)
    df = df.drop_duplicates("id", keep="last").reset_index(drop=True)
    if len(df) < before:
        log.warning("run %s: %s held %d repeated utterances (kept the last of each)",
                    run_id, artifact, before - len(df))
    df["errors"] = df["errors"].astype(int)
    df["ref_words"] = df["ref_words"].astype(int)
    return df


class TranscriptCache:
    """:func:`load_transcripts` remembered per (run, split): a report reads each table once."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self._tables: dict[tuple[str, str], pd.DataFrame] = {}

    def get(self, run_id: str, split: str) -> pd.DataFrame:
        key = (run_id, split)
        if key not in self._tables:
            self._tables[key] = load_transcripts(run_id, split, tracking_uri=self.tracking_uri)
        return self._tables[key]


def error_matrix(tables: Sequence[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Transcript tables of several runs (from :func:`load_transcripts`) on the utterances they all decoded:
    a (runs, utterances) matrix of errors, the utterances' reference word counts, and their ids (sorted).

    Example::

        >>> errors, words, ids = error_matrix([load_transcripts(r, "test-clean") for r in run_ids])  # doctest: +SKIP
        >>> errors.sum() / (words.sum() * len(run_ids))  # the WER pooled over the runs  # doctest: +SKIP
    """
    if not tables:
        return np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64), []
    indexed = [t.set_index("id") for t in tables]
    ids = indexed[0].index
    for t in indexed[1:]:
        ids = ids.intersection(t.index)
    ids = sorted(ids)
    errors = np.array([t.loc[ids, "errors"].to_numpy(np.int64) for t in indexed]).reshape(len(indexed), len(ids))
    words = indexed[0].loc[ids, "ref_words"].to_numpy(np.int64)
    for t, run in zip(indexed[1:], range(1, len(indexed))):
        if not np.array_equal(t.loc[ids, "ref_words"].to_numpy(np.int64), words):
            raise ValueError(f"transcript table {run} scores utterances against other references than table 0 "
                             "(a different normaliser or test set)")
    return errors, words, ids


@contextlib.contextmanager
def _no_progress_bar():
    """MLflow draws a progress bar for every download; a report downloads one table per run and split."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def missing_cells(study: str | Path | Study, runs: pd.DataFrame) -> pd.DataFrame:
    """The study's cells without a FINISHED run, in study order.

    Columns: ``cell_hash, run_name, state`` (``not run``, ``failed``, ``running``, ``interrupted``),
    ``run_id`` (empty when never started), ``error``, then one column per axis.

    Example::

        >>> missing_cells("studies/quickstart.yaml", load_runs("studies/quickstart.yaml"))  # doctest: +SKIP
    """
    study = as_study(study)
    by_hash = {h: r for h, r in zip(runs.get("cell_hash", []), runs.to_dict("records"))}
    rows = []
    for cell in study.cells:
        run = by_hash.get(cell.hash)
        if run is not None and run["status"] == "FINISHED":
            continue
        rows.append({
            "cell_hash": cell.hash,
            "run_name": cell.name,
            "state": "not run" if run is None else run["state"],
            "run_id": "" if run is None else run["run_id"],
            "error": "" if run is None else (run.get("error") or ""),
            **{k: cell.values.get(k, _config_value(cell, k)) for k in study.axis_keys},
        })
    return pd.DataFrame(rows, columns=["cell_hash", "run_name", "state", "run_id", "error", *study.axis_keys])


def study_parent_run(study: str | Path | Study, *, tracking_uri: str | None = None):
    """The study's parent MLflow run (tags ``harness.kind=study``, ``harness.experiments.study=<name>``), or None."""
    study = as_study(study)
    client = make_client(tracking_uri)
    exp_id = _experiment_id(client, study)
    if exp_id is None:
        return None
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{TAG_STUDY}` = '{study.name}' and tags.`{TAG_KIND}` = 'study'", max_results=1
    )
    return found[0] if found else None


__all__ = [
    "DEFAULT_HISTORY_METRICS", "SELECTED_PARAMS", "TAG_HASH", "as_study", "load_histories", "load_runs",
    "load_transcripts", "missing_cells", "parse_param", "study_parent_run", "tracking_uri_of",
]
