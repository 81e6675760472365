"""Run a study's cells as MLflow runs nested under one parent run.

The MLflow store is the source of truth: a cell whose run (found by its ``harness.cell_hash``
tag) is FINISHED is skipped, a FAILED one is retried only when asked, and an interrupted one is
resumed from its checkpoint into the same MLflow run. A cell that raises is marked FAILED with
its traceback as an artifact and the grid goes on.
"""
from __future__ import annotations

import logging
import math
import os
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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
    if uri.startswith("sqlite:///"):
        # Workers started together on a new SQLite store would all create (migrate) its tables at
        # once and fail ("table _alembic_tmp_... already exists"): one process at a time opens it.
        import filelock

        db = Path(uri[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(f"{db}.lock"):
            client = MlflowClient(tracking_uri=uri)  # opens the store: creates or upgrades the schema
            client.search_experiments(max_results=1)
    else:
        client = MlflowClient(tracking_uri=uri)
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(f"MLflow tracking server {uri} is not reachable ({e}); start it or fix --tracking-uri") from None
    return client


def _artifact_location(uri: str, name: str) -> str | None:
    """For a SQLite store, keep artifacts beside the database file (MLflow would use ./mlruns of
    whatever folder the command runs in); other stores choose their own location."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :]).resolve()
    return (db.parent / "mlartifacts" / name).as_uri()


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(client.tracking_uri, name))
    except Exception:  # noqa: BLE001 - another worker created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_cell_runs(client, experiment_id: str, study: str, cells: Sequence[Cell] = ()) -> dict[str, Any]:
    """cell hash -> latest MLflow run of that cell in this study.

    A run tagged with the legacy identity of one of ``cells`` (written before identity version 2)
    is listed under that cell's current hash, unless the cell has a run under its current hash."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'cell'",
        max_results=50000,
        order_by=["attributes.start_time ASC"],
    )
    found = {r.data.tags[TAG_HASH]: r for r in runs}
    for cell in cells:
        if cell.hash not in found and cell.legacy_hash in found:
            found[cell.hash] = found.pop(cell.legacy_hash)
    return found


CLAIM_TIMEOUT = 300.0  # seconds without a heartbeat after which a RUNNING cell counts as abandoned
HEARTBEAT_EVERY = 30.0
CLAIM_SETTLE = 1.0  # seconds a contender waits before reading the claims: longer than a store's commit takes


def cell_status(run: Any | None, *, claim_timeout: float = CLAIM_TIMEOUT) -> str:
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
        return "running" if time.time() - beat < claim_timeout else "interrupted"
    return "interrupted"  # KILLED / SCHEDULED


class Heartbeat:
    """Sets the run's heartbeat tag every few seconds from a daemon thread while a cell trains,
    so other workers can tell a live run from one whose worker died."""

    def __init__(self, client, run_id: str, every: float = HEARTBEAT_EVERY) -> None:
        import threading

        if not (math.isfinite(every) and every > 0):
            raise ValueError(f"heartbeat interval: expected a finite number of seconds > 0, got {every}")
        self.client, self.run_id, self.every = client, run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="harness-heartbeat")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.set_tag(self.run_id, TAG_HEARTBEAT, str(time.time()))
            except Exception:  # noqa: BLE001 - a missed beat is harmless; the next one retries
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _elect(client, experiment_id: str, mine: str, filter_string: str, *, live=lambda run: True) -> str:
    """Among the runs matching ``filter_string`` (``mine`` among them), the earliest one: ``(start time, run id)``.

    A run's start time is stamped by its client before the store commits it, so a contender that
    started a moment before us may not be visible yet: wait ``CLAIM_SETTLE`` seconds before reading,
    so that every run stamped earlier than ours is in the store when we look (otherwise two workers
    could each see themselves first, or one could adopt a run whose owner is about to delete it).
    A loser deletes its own run.
    """
    time.sleep(CLAIM_SETTLE)
    runs = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000)
    contenders = [r for r in runs if live(r) or r.info.run_id == mine]
    winner = min(contenders, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if contenders else mine
    if winner != mine:
        client.delete_run(mine)
    return winner


def claim_cell(client, experiment_id: str, study: str, cell_hash: str, generation: str, *,
               claim_timeout: float = CLAIM_TIMEOUT) -> str | None:
    """Atomically claim a cell among concurrent workers sharing one tracking store.

    Every contender creates a small *claim* run for ``(cell_hash, generation)`` and then reads all
    live claims for the same pair (:func:`_elect`): the earliest wins, the others delete theirs and
    move on. Every worker sees the same claims once its own is written, so exactly one wins, on
    any MLflow store (SQLite, PostgreSQL, a remote server). ``generation`` names what is being
    claimed (``new`` or the abandoned run being resumed), so an old claim never blocks a new
    round. Returns the winning claim's run id, or None.
    """
    claim = client.create_run(
        experiment_id, run_name=f"claim:{cell_hash[:12]}",
        tags={TAG_KIND: "claim", TAG_STUDY: study, TAG_HASH: cell_hash, "harness.generation": generation},
    ).info.run_id
    now_ms = time.time() * 1000
    winner = _elect(
        client, experiment_id, claim,
        (f"tags.`{TAG_KIND}` = 'claim' and tags.`{TAG_HASH}` = '{cell_hash}' "
         f"and tags.`harness.generation` = '{generation}'"),
        live=lambda c: now_ms - c.info.start_time < claim_timeout * 1000,
    )
    return claim if winner == claim else None


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


def peak_memory() -> str:
    """Peak resident memory of this process (and peak CUDA memory when a GPU was used)."""
    import resource

    import torch

    text = f"rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    if torch.cuda.is_available():
        text += f", cuda {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return text


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # done | failed | skipped-done | skipped-failed | killed
    run_id: str | None
    metrics: dict[str, float]
    error: str = ""


def _parent_filter(study: Study) -> str:
    return f"tags.`{TAG_STUDY}` = '{study.name}' and tags.`{TAG_KIND}` = 'study'"


def _parent_run(client, experiment_id: str, study: Study) -> str:
    """The study's one parent run; concurrent workers agree on the earliest one (like claims)."""
    runs = client.search_runs([experiment_id], filter_string=_parent_filter(study), max_results=100)
    if not runs:
        mine = client.create_run(experiment_id, run_name=f"study:{study.name}",
                                 tags={TAG_KIND: "study", TAG_STUDY: study.name}).info.run_id
        winner = _elect(client, experiment_id, mine, _parent_filter(study))
        if winner == mine:
            client.log_text(mine, study.path.read_text(), "study.yaml")
        return winner
    run_id = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
    client.update_run(run_id, status="RUNNING")
    return run_id


def run_study(
    study: Study,
    *,
    uri: str | None = None,
    runs_root: str | Path = "runs",
    retry_failed: bool = False,
    progress: bool = True,
    claim_timeout: float = CLAIM_TIMEOUT,
) -> list[CellOutcome]:
    """Run every cell that is not done; returns one outcome per cell, in grid order.

    Any number of workers may run the same study against one tracking store at once: each cell
    is claimed atomically (:func:`claim_cell`), so no cell trains twice, and a cell whose worker
    died (no heartbeat for ``claim_timeout`` seconds) is resumed by the next worker to reach it.
    """
    if not (math.isfinite(claim_timeout) and claim_timeout > 0):
        raise ValueError(f"claim_timeout: expected a finite number of seconds > 0, got {claim_timeout}")
    client = make_client(uri)
    exp_id = _experiment_id(client, study.experiment)
    parent = _parent_run(client, exp_id, study)
    env = environment_tags()
    outcomes: list[CellOutcome] = []
    try:
        for i, cell in enumerate(study.cells, 1):
            label = f"[{i}/{len(study.cells)}] {cell.name} ({cell.hash[:12]})"
            outcome = _run_cell(client, exp_id, parent, study, cell, env, label=label, runs_root=runs_root,
                                retry_failed=retry_failed, progress=progress, claim_timeout=claim_timeout)
            outcomes.append(outcome)
    except KeyboardInterrupt:
        try:
            client.set_terminated(parent, "KILLED")
        except Exception:  # noqa: BLE001 - the interrupt is what the user must see, not a store error
            pass
        raise
    _close_parent(client, exp_id, study, claim_timeout=claim_timeout)
    return outcomes


def _close_parent(client, exp_id: str, study: Study, *, claim_timeout: float) -> None:
    """Mark the parent run FINISHED / FAILED once no cell is left to run, whichever worker sees it.

    Read from the store, not from this worker's outcomes: a cell another worker was running when
    this one passed it may have finished since (the last worker to finish closes the parent).
    """
    runs = find_cell_runs(client, exp_id, study.name, study.cells)
    states = [cell_status(runs.get(c.hash), claim_timeout=claim_timeout) for c in study.cells]
    if any(s not in ("done", "failed") for s in states):
        return  # other workers are still on it (or a cell is free again): the parent stays RUNNING
    parents = client.search_runs([exp_id], filter_string=_parent_filter(study), max_results=100)
    for run in parents:  # read again, never cached: the store says which parent run survived
        client.set_terminated(run.info.run_id, "FAILED" if "failed" in states else "FINISHED")


def _cell_run(client, exp_id: str, study: Study, cell: Cell) -> Any | None:
    """The cell's latest run; one an older version tagged with the cell's legacy identity is adopted
    (re-tagged with the current one, the old kept as ``harness.cell_hash_v1``)."""
    run = find_cell_runs(client, exp_id, study.name, [cell]).get(cell.hash)
    if run is not None and run.data.tags.get(TAG_HASH) != cell.hash:
        client.set_tag(run.info.run_id, "harness.cell_hash_v1", run.data.tags[TAG_HASH])
        client.set_tag(run.info.run_id, TAG_HASH, cell.hash)
        log.info("%s: adopted run %s of an older version (identity %s)", cell.name, run.info.run_id, cell.legacy_hash[:12])
        run = client.get_run(run.info.run_id)
    return run


def _run_cell(client, exp_id: str, parent: str, study: Study, cell: Cell, env: dict[str, str], *, label: str,
              runs_root: str | Path, retry_failed: bool, progress: bool, claim_timeout: float) -> CellOutcome:
    from harness.tracking import MlflowTracker
    from harness.train import default_run_dir, resolve_device, run_training

    existing = _cell_run(client, exp_id, study, cell)
    status = cell_status(existing, claim_timeout=claim_timeout)
    if status == "done":
        log.info("%s: done, skipped", label)
        return CellOutcome(cell, "skipped-done", existing.info.run_id, existing.data.metrics)
    if status == "failed" and not retry_failed:
        log.info("%s: failed before, skipped (use --retry-failed)", label)
        return CellOutcome(cell, "skipped-failed", existing.info.run_id, existing.data.metrics,
                           existing.data.tags.get("harness.error", ""))
    if status == "running":
        log.info("%s: running in another worker, skipped", label)
        return CellOutcome(cell, "skipped-running", existing.info.run_id, {})
    generation = "new" if existing is None else f"{existing.info.run_id}:{existing.data.tags.get(TAG_HEARTBEAT, '')}"
    claim = claim_cell(client, exp_id, study.name, cell.hash, generation, claim_timeout=claim_timeout)
    if claim is None:
        log.info("%s: claimed by another worker, skipped", label)
        return CellOutcome(cell, "skipped-running", None, {})
    try:
        # Re-read after winning: a worker that finished this cell just before our claim shows up here.
        now = _cell_run(client, exp_id, study, cell)
        if (now.info.run_id if now else None) != (existing.info.run_id if existing else None) or (
            now is not None and cell_status(now, claim_timeout=claim_timeout) in ("done", "running")
        ):
            log.info("%s: taken by another worker meanwhile, skipped", label)
            return CellOutcome(cell, "skipped-running", None, {})
        log.info("%s: %s", label, "resuming" if existing else "starting")
        if existing:
            run_id = existing.info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            tags = {
                "mlflow.parentRunId": parent, TAG_KIND: "cell", TAG_STUDY: study.name, TAG_HASH: cell.hash,
                **env, "harness.device": str(resolve_device(cell.config.train.device)),
                **{f"axis.{k}": str(v) for k, v in cell.values.items()},  # every axis of the study
            }
            run_id = client.create_run(exp_id, run_name=cell.name, tags=tags).info.run_id
        client.set_tag(run_id, TAG_HEARTBEAT, str(time.time()))
    finally:
        client.delete_run(claim)  # the cell run (with its heartbeat) now guards the cell
    out_dir = default_run_dir(cell.config, Path(runs_root) / study.name)
    tracker = MlflowTracker(client, run_id)
    try:
        # Beat several times per claim_timeout, so a short timeout never mistakes a live worker for a dead one.
        with Heartbeat(client, run_id, every=min(HEARTBEAT_EVERY, claim_timeout / 3)):
            result = run_training(cell.config, out_dir, tracker=tracker, progress=progress)
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
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
        client.set_tag(run_id, "harness.peak_memory", peak_memory())  # the first thing to look at after an OOM
        if getattr(e, "step", None) is not None:
            client.set_tag(run_id, "harness.failed_step", str(e.step))
        client.set_terminated(run_id, "FAILED")
        return CellOutcome(cell, "failed", run_id, {}, f"{type(e).__name__}: {e}")
    client.set_terminated(run_id, "FINISHED")
    return CellOutcome(cell, "done", run_id, result.metrics)


def study_table(study: Study, *, uri: str | None = None) -> list[dict[str, str]]:
    """Rows for ``--dry-run``: every cell with its hash, status and run name."""
    client = make_client(uri)
    exp = client.get_experiment_by_name(study.experiment)
    runs = find_cell_runs(client, exp.experiment_id, study.name, study.cells) if exp else {}
    return [
        {"#": str(i), "hash": c.hash[:12], "status": cell_status(runs.get(c.hash)), "run": c.name}
        for i, c in enumerate(study.cells, 1)
    ]
