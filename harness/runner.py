"""Run a study's cells as MLflow runs nested under one parent run.

The MLflow store is the source of truth: a cell whose run (found by its ``harness.cell_hash``
tag) is FINISHED is skipped, a FAILED one is retried only when asked, and an interrupted one is
resumed from its checkpoint into the same MLflow run. A cell that raises is marked FAILED with
its traceback as an artifact and the grid goes on.
"""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.study import Cell, Study

log = logging.getLogger("harness.study")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TAG_KIND, TAG_STUDY, TAG_HASH = "harness.kind", "harness.study", "harness.cell_hash"
TAG_HEARTBEAT = "harness.heartbeat"


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def make_client(uri: str | None = None):
    """An MlflowClient for ``uri``; fails early with a clear message when a server is unreachable."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(f"MLflow tracking server {uri} is not reachable ({e}); start it or fix --tracking-uri") from None
    return client


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def find_cell_runs(client, experiment_id: str, study: str) -> dict[str, Any]:
    """cell hash -> latest MLflow run of that cell in this study."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'cell'",
        max_results=50000,
        order_by=["attributes.start_time ASC"],
    )
    return {r.data.tags[TAG_HASH]: r for r in runs}


def cell_status(run: Any | None) -> str:
    """new | done | failed | running | interrupted."""
    if run is None:
        return "new"
    status = run.info.status
    if status == "FINISHED":
        return "done"
    if status == "FAILED":
        return "failed"
    if status == "RUNNING":
        beat = float(run.data.tags.get(TAG_HEARTBEAT, 0))
        return "running" if time.time() - beat < 600 else "interrupted"
    return "interrupted"  # KILLED / SCHEDULED


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_tags() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {
        "harness.git_commit": git_commit(),
        "harness.torch": torch.__version__,
        "harness.transformers": transformers.__version__,
        "harness.peft": peft.__version__,
        "harness.python": platform.python_version(),
        "harness.host": platform.node(),
    }


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # done | failed | skipped-done | skipped-failed | killed
    run_id: str | None
    metrics: dict[str, float]
    error: str = ""


def _parent_run(client, experiment_id: str, study: Study) -> str:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_STUDY}` = '{study.name}' and tags.`{TAG_KIND}` = 'study'", max_results=1
    )
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id, run_name=f"study:{study.name}", tags={TAG_KIND: "study", TAG_STUDY: study.name})
    client.log_text(run.info.run_id, study.path.read_text(), "study.yaml")
    return run.info.run_id


def run_study(
    study: Study,
    *,
    uri: str | None = None,
    runs_root: str | Path = "runs",
    retry_failed: bool = False,
    progress: bool = True,
) -> list[CellOutcome]:
    """Run every cell that is not done; returns one outcome per cell, in grid order."""
    from harness.tracking import MlflowTracker
    from harness.train import resolve_device, run_training

    client = make_client(uri)
    exp_id = _experiment_id(client, study.experiment)
    parent = _parent_run(client, exp_id, study)
    env = environment_tags()
    outcomes: list[CellOutcome] = []
    try:
        for i, cell in enumerate(study.cells, 1):
            existing = find_cell_runs(client, exp_id, study.name).get(cell.hash)
            status = cell_status(existing)
            label = f"[{i}/{len(study.cells)}] {cell.name} ({cell.hash[:12]})"
            if status == "done":
                log.info("%s: done, skipped", label)
                outcomes.append(CellOutcome(cell, "skipped-done", existing.info.run_id, existing.data.metrics))
                continue
            if status == "failed" and not retry_failed:
                log.info("%s: failed before, skipped (use --retry-failed)", label)
                outcomes.append(CellOutcome(cell, "skipped-failed", existing.info.run_id, existing.data.metrics,
                                            existing.data.tags.get("harness.error", "")))
                continue
            if status == "running":
                log.info("%s: running in another worker, skipped", label)
                outcomes.append(CellOutcome(cell, "skipped-running", existing.info.run_id, {}))
                continue
            log.info("%s: %s", label, "resuming" if existing else "starting")
            if existing:
                run_id = existing.info.run_id
                client.update_run(run_id, status="RUNNING")
            else:
                tags = {
                    "mlflow.parentRunId": parent, TAG_KIND: "cell", TAG_STUDY: study.name, TAG_HASH: cell.hash,
                    **env, "harness.device": str(resolve_device(cell.config.train.device)),
                    **{f"axis.{k}": str(v) for k, v in cell.values.items()},
                }
                run_id = client.create_run(exp_id, run_name=cell.name, tags=tags).info.run_id
            client.set_tag(run_id, TAG_HEARTBEAT, str(time.time()))
            out_dir = Path(runs_root) / study.name / cell.hash[:12]
            tracker = MlflowTracker(client, run_id)
            try:
                result = run_training(cell.config, out_dir, tracker=tracker, progress=progress)
            except KeyboardInterrupt:
                client.set_terminated(run_id, "KILLED")
                outcomes.append(CellOutcome(cell, "killed", run_id, {}))
                raise
            except Exception as e:  # noqa: BLE001 - isolate the failure to this cell
                tb = traceback.format_exc()
                log.error("%s failed: %s", label, e)
                try:
                    tracker.flush()
                except Exception:  # noqa: BLE001
                    pass
                client.log_text(run_id, tb, "error.txt")
                client.set_tag(run_id, "harness.error", f"{type(e).__name__}: {e}"[:5000])
                client.set_terminated(run_id, "FAILED")
                outcomes.append(CellOutcome(cell, "failed", run_id, {}, f"{type(e).__name__}: {e}"))
                continue
            client.set_terminated(run_id, "FINISHED")
            outcomes.append(CellOutcome(cell, "done", run_id, result.metrics))
    except KeyboardInterrupt:
        client.set_terminated(parent, "KILLED")
        raise
    failed = any(o.status in ("failed", "skipped-failed") for o in outcomes)
    client.set_terminated(parent, "FAILED" if failed else "FINISHED")
    return outcomes


def study_table(study: Study, *, uri: str | None = None) -> list[dict[str, str]]:
    """Rows for ``--dry-run``: every cell with its hash, status and run name."""
    client = make_client(uri)
    exp = client.get_experiment_by_name(study.experiment)
    runs = find_cell_runs(client, exp.experiment_id, study.name) if exp else {}
    return [
        {"#": str(i), "hash": c.hash[:12], "status": cell_status(runs.get(c.hash)), "run": c.name}
        for i, c in enumerate(study.cells, 1)
    ]
