"""Run a study's cells as MLflow runs nested under one parent run.

The MLflow store is the source of truth: a cell whose run (found by its ``harness.cell_hash``
tag) is FINISHED is skipped, a FAILED one is retried only when asked, and an interrupted one is
resumed from its checkpoint into the same MLflow run. A cell that raises is marked FAILED with
its traceback as an artifact and the grid goes on.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.experiments.study import Cell, Study
from harness.tracking import tags
from harness.tracking.liveness import CLAIM_TIMEOUT, HEARTBEAT_EVERY, claim_cell, find_parent_runs, parent_run, run_heartbeat
from harness.tracking.store import environment_tags, experiment_id, make_client, record_failure, with_retries

log = logging.getLogger("harness.study")


def find_cell_runs(client, experiment_id: str, study: str, cells: Sequence[Cell] = ()) -> dict[str, Any]:
    """cell hash -> latest MLflow run of that cell in this study.

    A run tagged with an older identity of one of ``cells`` (written before the current identity
    version; the newest such run wins) is listed under that cell's current hash, unless the cell has
    a run under its current hash."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tags.STUDY}` = '{study}' and tags.`{tags.KIND}` = 'cell'",
        max_results=50000,
        order_by=["attributes.start_time ASC"],
    )
    found = {r.data.tags[tags.CELL_HASH]: r for r in runs}
    for cell in cells:
        old = [h for h in cell.legacy_hashes.values() if h in found]
        if cell.hash not in found and old:
            found[cell.hash] = found.pop(old[0])
    return found


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
        beat = float(run.data.tags.get(tags.HEARTBEAT, 0))
        return "running" if time.time() - beat < claim_timeout else "interrupted"
    return "interrupted"  # KILLED / SCHEDULED


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # done | failed | skipped-done | skipped-failed | killed
    run_id: str | None
    metrics: dict[str, float]
    error: str = ""


def _parent_tags(study: Study) -> dict[str, str]:
    return {tags.KIND: "study", tags.STUDY: study.name}


def run_study(
    study: Study,
    *,
    uri: str | None = None,
    runs_root: str | Path = "runs",
    retry_failed: bool = False,
    progress: bool = True,
    claim_timeout: float = CLAIM_TIMEOUT,
    only: frozenset[str] | None = None,
    run_tags: dict[str, str] | None = None,
    procs_per_cell: int = 1,
) -> list[CellOutcome]:
    """Run every cell that is not done; returns one outcome per cell, in grid order.

    ``only``: the hashes of the cells this worker may run (a SLURM array task runs one); the others are
    not looked at. ``run_tags``: tags set on the run of every cell this worker trains (a new run or a
    resumed one; e.g. the SLURM job id and its log paths). ``procs_per_cell``: train each cell on that
    many processes of this machine, data parallel (one per GPU on a GPU node; see
    :mod:`harness.experiments.ranks`); 1 trains in this process.

    Any number of workers may run the same study against one tracking store at once: each cell
    is claimed atomically (:func:`~harness.tracking.liveness.claim_cell`), so no cell trains twice,
    and a cell whose worker died (no heartbeat for ``claim_timeout`` seconds) is resumed by the next
    worker to reach it.
    """
    if not (math.isfinite(claim_timeout) and claim_timeout > 0):
        raise ValueError(f"claim_timeout: expected a finite number of seconds > 0, got {claim_timeout}")
    if procs_per_cell < 1:
        raise ValueError(f"procs_per_cell: expected >= 1, got {procs_per_cell}")
    client = make_client(uri)
    exp_id = experiment_id(client, study.experiment)
    parent, _ = parent_run(client, exp_id, _parent_tags(study), run_name=f"study:{study.name}",
                           on_create=lambda run_id: client.log_text(run_id, study.path.read_text(), "study.yaml"))
    env = environment_tags()
    env = {**env, **(run_tags or {})}
    outcomes: list[CellOutcome] = []
    try:
        for i, cell in enumerate(study.cells, 1):
            if only is not None and cell.hash not in only:
                continue
            label = f"[{i}/{len(study.cells)}] {cell.name} ({cell.hash[:12]})"
            outcome = _run_cell(client, exp_id, parent, study, cell, env, label=label, runs_root=runs_root,
                                retry_failed=retry_failed, progress=progress, claim_timeout=claim_timeout,
                                trainer=_Trainer(uri, procs_per_cell, progress))
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
    for run in find_parent_runs(client, exp_id, _parent_tags(study)):  # the store says which parent survived
        with_retries(client.set_terminated, run.info.run_id, "FAILED" if "failed" in states else "FINISHED")


def _cell_run(client, exp_id: str, study: Study, cell: Cell) -> Any | None:
    """The cell's latest run; one an older version tagged with an older identity of the cell is
    adopted (re-tagged with the current one, the old kept as ``harness.cell_hash_v<version>``)."""
    run = find_cell_runs(client, exp_id, study.name, [cell]).get(cell.hash)
    if run is not None and run.data.tags.get(tags.CELL_HASH) != cell.hash:
        old = run.data.tags[tags.CELL_HASH]
        version = next(v for v, h in cell.legacy_hashes.items() if h == old)
        with_retries(client.set_tag, run.info.run_id, tags.older_cell_hash(version), old)
        with_retries(client.set_tag, run.info.run_id, tags.CELL_HASH, cell.hash)
        log.info("%s: adopted run %s of identity version %d (%s)", cell.name, run.info.run_id, version, old[:12])
        run = client.get_run(run.info.run_id)
    return run


def _skip(existing: Any | None, cell: Cell, label: str, *, retry_failed: bool, claim_timeout: float) -> CellOutcome | None:
    """The outcome of a cell this worker does not run (done, failed before, running elsewhere), else None."""
    status = cell_status(existing, claim_timeout=claim_timeout)
    if status == "done":
        log.info("%s: done, skipped", label)
        return CellOutcome(cell, "skipped-done", existing.info.run_id, existing.data.metrics)
    if status == "failed" and not retry_failed:
        log.info("%s: failed before, skipped (use --retry-failed)", label)
        return CellOutcome(cell, "skipped-failed", existing.info.run_id, existing.data.metrics,
                           existing.data.tags.get(tags.ERROR, ""))
    if status == "running":
        log.info("%s: running in another worker, skipped", label)
        return CellOutcome(cell, "skipped-running", existing.info.run_id, {})
    return None


def _take_cell(client, exp_id: str, parent: str, study: Study, cell: Cell, env: dict[str, str], existing: Any | None,
               *, label: str, claim_timeout: float) -> str | None:
    """Claim the cell and open (or reopen) its run, beating once; None when another worker has it."""
    from harness.run.trainer import resolve_device

    generation = "new" if existing is None else f"{existing.info.run_id}:{existing.data.tags.get(tags.HEARTBEAT, '')}"
    claim = claim_cell(client, exp_id, study.name, cell.hash, generation, claim_timeout=claim_timeout)
    if claim is None:
        log.info("%s: claimed by another worker, skipped", label)
        return None
    try:
        # Re-read after winning: a worker that finished this cell just before our claim shows up here.
        now = _cell_run(client, exp_id, study, cell)
        if (now.info.run_id if now else None) != (existing.info.run_id if existing else None) or (
            now is not None and cell_status(now, claim_timeout=claim_timeout) in ("done", "running")
        ):
            log.info("%s: taken by another worker meanwhile, skipped", label)
            return None
        log.info("%s: %s", label, "resuming" if existing else "starting")
        if existing:
            run_id = existing.info.run_id
            with_retries(client.update_run, run_id, status="RUNNING")
            for key, value in env.items():  # who runs it now (host, versions, SLURM job): the latest worker's
                with_retries(client.set_tag, run_id, key, value)
        else:
            run_tags = {
                tags.PARENT: parent, tags.KIND: "cell", tags.STUDY: study.name, tags.CELL_HASH: cell.hash,
                **env, tags.DEVICE: str(resolve_device(cell.config.train.device)),
                **{f"axis.{k}": str(v) for k, v in cell.values.items()},  # every axis of the study
                tags.DESCRIPTION: _describe(study, cell),
            }
            run_id = with_retries(client.create_run, exp_id, run_name=cell.name, tags=run_tags).info.run_id
        with_retries(client.set_tag, run_id, tags.HEARTBEAT, str(time.time()))
        return run_id
    finally:
        with_retries(client.delete_run, claim)  # the cell run (with its heartbeat) now guards the cell


def _describe(study: Study, cell: Cell) -> str:
    """The run's description in MLflow's UI (Markdown): what the cell changes, and its study."""
    axes = "\n".join(f"- `{k}` = `{v}`" for k, v in cell.values.items()) or "- (the study's base configuration)"
    about = f" ({study.description})" if study.description else ""
    return f"Cell `{cell.hash[:12]}` of study **{study.name}**{about}:\n\n{axes}\n"


@dataclass(frozen=True)
class _Trainer:
    """How a cell is trained: in this process, or by ``procs`` ranks (:mod:`harness.experiments.ranks`)."""

    uri: str | None
    procs: int
    progress: bool

    def __call__(self, client, run_id: str, config, out_dir: Path) -> dict[str, float]:
        from harness.run.trainer import run_training
        from harness.tracking.trackers import MlflowTracker

        if self.procs == 1:
            tracker = MlflowTracker(client, run_id)
            try:
                return run_training(config, out_dir, tracker=tracker, progress=self.progress).metrics
            except Exception:
                with contextlib.suppress(Exception):  # what it holds, before the failure is recorded
                    tracker.flush()
                raise
        from harness.experiments.ranks import RankJob, train_ranks

        return train_ranks(RankJob(config, str(out_dir), self.uri, run_id), self.procs, progress=self.progress)


def _run_cell(client, exp_id: str, parent: str, study: Study, cell: Cell, env: dict[str, str], *, label: str,
              runs_root: str | Path, retry_failed: bool, progress: bool, claim_timeout: float,
              trainer: _Trainer) -> CellOutcome:
    from harness.experiments.ranks import RankFailed
    from harness.run.trainer import default_run_dir
    from harness.tracking.system import system_metrics

    existing = _cell_run(client, exp_id, study, cell)
    skipped = _skip(existing, cell, label, retry_failed=retry_failed, claim_timeout=claim_timeout)
    if skipped is not None:
        return skipped
    run_id = _take_cell(client, exp_id, parent, study, cell, env, existing, label=label, claim_timeout=claim_timeout)
    if run_id is None:
        return CellOutcome(cell, "skipped-running", None, {})
    out_dir = default_run_dir(cell.config, Path(runs_root) / study.name)
    try:
        # Beat several times per claim_timeout, so a short timeout never mistakes a live worker for a dead one.
        with run_heartbeat(client, run_id, every=min(HEARTBEAT_EVERY, claim_timeout / 3)), system_metrics(client, run_id):
            metrics = trainer(client, run_id, cell.config, out_dir)
    except KeyboardInterrupt:
        client.set_terminated(run_id, "KILLED")
        raise
    except Exception as e:  # noqa: BLE001 - isolate the failure to this cell
        log.error("%s failed: %s", label, e)
        record_failure(client, run_id, e, e.traceback if isinstance(e, RankFailed) else traceback.format_exc())
        return CellOutcome(cell, "failed", run_id, {}, f"{type(e).__name__}: {e}")
    with_retries(client.set_terminated, run_id, "FINISHED")
    return CellOutcome(cell, "done", run_id, metrics)


def study_table(study: Study, *, uri: str | None = None) -> list[dict[str, str]]:
    """Rows for ``--dry-run``: every cell with its hash, status and run name."""
    client = make_client(uri)
    exp = client.get_experiment_by_name(study.experiment)
    runs = find_cell_runs(client, exp.experiment_id, study.name, study.cells) if exp else {}
    return [
        {"#": str(i), "hash": c.hash[:12], "status": cell_status(runs.get(c.hash)), "run": c.name}
        for i, c in enumerate(study.cells, 1)
    ]


def study_status(study: Study, *, uri: str | None = None, claim_timeout: float = CLAIM_TIMEOUT) -> list[dict[str, str]]:
    """Every cell with its status, run name, and the SLURM job and log its run is tagged with (if any)."""
    client = make_client(uri)
    exp = client.get_experiment_by_name(study.experiment)
    runs = find_cell_runs(client, exp.experiment_id, study.name, study.cells) if exp else {}
    rows = []
    for i, c in enumerate(study.cells, 1):
        run = runs.get(c.hash)
        t = run.data.tags if run is not None else {}
        rows.append({"#": str(i), "hash": c.hash[:12], "cell_hash": c.hash,
                     "status": cell_status(run, claim_timeout=claim_timeout), "run": c.name,
                     "job": t.get(tags.SLURM_JOB, ""), "log": t.get(tags.SLURM_STDOUT, "")})
    return rows
