"""The end of a search: the best trial and Optuna's plots on the parent run."""
from __future__ import annotations


import contextlib
import html
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from harness.tracking.store import with_retries
from harness.experiments.search.trials import ATTR_RUN_ID, tally
from harness.experiments.search.spec import SearchSpec

log = logging.getLogger("harness.search")


def summarise(optuna_study: optuna.Study, spec: SearchSpec, client: Any, parent: str, status: str) -> None:
    from mlflow.entities import Metric

    n = tally(optuna_study)
    step = n["counted"]
    now = int(time.time() * 1000)
    metrics = [Metric(f"search/{k}", float(v), now, step) for k, v in n.items() if k not in ("running", "waiting")]
    try:
        best = optuna_study.best_trial
    except ValueError:
        best = None  # no complete trial yet
    if best is not None:
        metrics += [Metric(f"best/{spec.metric}", float(best.value), now, step),
                    Metric("best/trial_number", float(best.number), now, step)]
        best_tags = {"best.trial_number": str(best.number), "best.value": repr(best.value),
                "best.mlflow_run_id": str(best.user_attrs.get(ATTR_RUN_ID, "")),
                **{f"best.{k}": repr(v) for k, v in best.params.items()}}
        for key, value in best_tags.items():
            with_retries(client.set_tag, parent, key, value)
        best_json = {"number": best.number, "value": best.value, "params": best.params,
                     "mlflow_run_id": best.user_attrs.get(ATTR_RUN_ID)}
        with_retries(client.log_text, parent, json.dumps(best_json, indent=2), "best_trial.json")
        log.info("best trial %d: %s = %.4g with %s", best.number, spec.metric, best.value, best.params)
    with_retries(client.log_batch, parent, metrics=metrics)
    with contextlib.suppress(Exception):
        _log_plots(optuna_study, spec, client, parent)
    if best is None and status == "FINISHED":
        status = "FAILED"
    with_retries(client.set_terminated, parent, status)


def write_plots(optuna_study: optuna.Study, path: str | Path, *, metric: str = "objective") -> list[str]:
    """Write Optuna's plots (optimization history, parameter importances, parallel coordinates,
    intermediate values) into one self-contained HTML file; returns the titles of those drawn.

    One file embeds plotly.js once (about 4.6 MB) and opens offline, also inside the MLflow UI.

    Example::

        >>> write_plots(optuna.load_study(study_name="quick", storage="sqlite:///optuna.db"), "plots.html")  # doctest: +SKIP
        ['optimization history', 'parameter importances', 'parallel coordinates', 'intermediate values']
    """
    import optuna.visualization as vis

    plots = [
        ("optimization history", lambda: vis.plot_optimization_history(optuna_study, target_name=metric)),
        ("parameter importances", lambda: vis.plot_param_importances(optuna_study, target_name=metric)),
        ("parallel coordinates", lambda: vis.plot_parallel_coordinate(optuna_study, target_name=metric)),
        ("intermediate values", lambda: vis.plot_intermediate_values(optuna_study)),
    ]
    parts, drawn = [], []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "too few trials" notes: the page says what is missing
    try:
        for title, make in plots:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fig = make()
            except Exception as e:  # noqa: BLE001 - e.g. importances need two complete trials
                parts.append(f"<h2>{html.escape(title)}</h2><p>not drawn: {html.escape(str(e))}</p>")
                continue
            parts.append(f"<h2>{html.escape(title)}</h2>" + fig.to_html(full_html=False, include_plotlyjs=not drawn))
            drawn.append(title)
    finally:
        optuna.logging.set_verbosity(verbosity)
    name = html.escape(optuna_study.study_name)
    Path(path).write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title></head>"
        f"<body><h1>Optuna study {name}</h1>{''.join(parts)}</body></html>"
    )
    return drawn


def _log_plots(optuna_study: optuna.Study, spec: SearchSpec, client: Any, parent: str) -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        log.warning("plotly is not installed: no Optuna plots (pip install plotly)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optuna_plots.html"
        write_plots(optuna_study, path, metric=spec.metric)
        with_retries(client.log_artifact, parent, str(path), "plots")
