"""SLURM: a study's pending cells as one job array, a search's workers as array tasks (with submitit).

Each array task runs exactly one cell through the local runner's own code path
(:func:`harness.experiments.grid.run_study` restricted to that cell), so claims, heartbeats, resuming
and the MLflow layout are the same on a cluster as on a laptop. The shared state stays what it is:
the MLflow store, the Optuna storage, ``--runs-root`` and the feature cache, on a shared filesystem.

Preemption and time limits: SLURM sends SIGUSR2 90 s before a time limit (submitit's
``--signal=USR2@90``) and SIGTERM when it preempts a job or on ``scancel --signal=TERM``. While a cell
trains, either signal lets the current step finish, writes a checkpoint and marks the run KILLED;
the task then requeues itself (``scontrol requeue``), and the requeued task resumes the cell from its
checkpoint into the same MLflow run, with no step logged twice. Outside training (loading, decoding)
submitit's own handler takes SIGUSR2 and requeues through :meth:`CellTask.checkpoint`. A job that was
cancelled (plain ``scancel``) is not requeued. A task that died without a word (node failure, SIGKILL)
leaves a RUNNING run whose heartbeat goes stale: the next submission picks the cell up after
``--claim-timeout``, as a local worker would.

Logs: ``<logs>/<study>/<job id>/`` holds submitit's files for each task (``*_log.out``, ``*_log.err``);
``<logs>/<study>/cells/<cell hash>.out`` / ``.err`` link to the latest task's logs of that cell, and the
cell's MLflow run is tagged with the job id and the log paths (:mod:`harness.tracking.tags`).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError
from harness.experiments.grid import cell_status, find_cell_runs, run_study
from harness.experiments.study import Study, load_study
from harness.tracking import tags
from harness.tracking.store import make_client, with_retries

log = logging.getLogger("harness.slurm")

SIGNAL_DELAY_S = 90
"""Seconds before its time limit that SLURM warns a task (SIGUSR2): time to finish a step and checkpoint."""
SUBMISSIONS = "submissions.jsonl"
"""Per study, under ``<logs>/<study>/``: one line per submitted task (cell hash or worker, job id, time)."""

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEM = re.compile(r"^\d+(?:\.\d+)?[KMGT]?B?$", re.IGNORECASE)
_FLAG = re.compile(r"^[a-z][a-z0-9_-]*$")


def parse_time(text: str) -> int:
    """A SLURM ``--time`` (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) -> whole minutes (>= 1)."""
    m = _TIME.match(text.strip())
    if not m:
        raise ConfigError(f"--time: expected a SLURM time (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S), got {text!r}")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        h, mnt, s = (parts + [0, 0])[:3]
        seconds = int(days) * 86400 + h * 3600 + mnt * 60 + s
    elif len(parts) == 1:
        seconds = parts[0] * 60
    elif len(parts) == 2:
        seconds = parts[0] * 60 + parts[1]
    else:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    if seconds <= 0:
        raise ConfigError(f"--time: expected a positive time, got {text!r}")
    return max(1, -(-seconds // 60))


def parse_extra(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--slurm a=b`` items -> extra ``#SBATCH --a=b`` lines (``--slurm exclusive`` for a bare flag)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not _FLAG.match(key):
            raise ConfigError(f"--slurm {item!r}: expected an sbatch option as name=value (e.g. account=speech, qos=high)")
        out[key.replace("-", "_")] = value if sep else ""
    return out


@dataclass(frozen=True)
class SlurmOptions:
    """How each task is requested from SLURM (one task per cell, or per search worker)."""

    partition: str | None = None
    """``--partition``; None: the cluster's default partition."""
    gpus_per_cell: int = 0
    """``--gpus-per-node`` of each task. A cell with several GPUs trains on one process per GPU (data
    parallel, :mod:`harness.experiments.ranks`)."""
    procs_per_cell: int | None = None
    """Training processes of each cell task; None: one per GPU, or 1 on a CPU node. (Several on a CPU node:
    data parallel over gloo, each with ``cpus_per_cell / procs`` threads.)"""
    cpus_per_cell: int | None = None
    """``--cpus-per-task``; torch in the task uses that many threads. None: the cluster's default."""
    mem: str | None = None
    """``--mem`` in SLURM's format (``16G``, ``64000M``); None: the cluster's default."""
    time_min: int = 24 * 60
    """``--time`` in minutes; the task is warned (SIGUSR2) 90 s before it, checkpoints and is requeued."""
    max_parallel: int | None = None
    """At most this many tasks of the array run at once (``--array=...%K``)."""
    extra: dict[str, str] = field(default_factory=dict)
    """More ``#SBATCH`` options (``--slurm account=speech``)."""
    logs: str = "slurm-logs"
    """Folder (on the shared filesystem) for each task's stdout/stderr."""

    def __post_init__(self) -> None:
        if self.gpus_per_cell < 0:
            raise ConfigError(f"--gpus-per-cell: expected >= 0, got {self.gpus_per_cell}")
        if self.procs_per_cell is not None and self.procs_per_cell < 1:
            raise ConfigError(f"--procs-per-cell: expected >= 1, got {self.procs_per_cell}")
        if self.gpus_per_cell and (self.procs_per_cell or 0) > self.gpus_per_cell:
            raise ConfigError(f"--procs-per-cell {self.procs_per_cell} with --gpus-per-cell {self.gpus_per_cell}: "
                              "each training process takes one GPU; expected at most one per GPU")
        if self.cpus_per_cell is not None and self.cpus_per_cell < 1:
            raise ConfigError(f"--cpus-per-cell: expected >= 1, got {self.cpus_per_cell}")
        if self.mem is not None and not _MEM.match(self.mem):
            raise ConfigError(f"--mem: expected a SLURM memory size such as 16G or 64000M, got {self.mem!r}")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ConfigError(f"--max-parallel: expected >= 1, got {self.max_parallel}")

    @property
    def ranks(self) -> int:
        """The training processes of each cell task."""
        return self.procs_per_cell or max(1, self.gpus_per_cell)

    def sbatch(self, name: str, n_tasks: int) -> dict[str, Any]:
        """The submitit parameters (each one an ``#SBATCH`` option) of an array of ``n_tasks``."""
        params: dict[str, Any] = {
            "job_name": name, "time": self.time_min, "signal_delay_s": SIGNAL_DELAY_S,
            "array_parallelism": min(self.max_parallel or n_tasks, max(n_tasks, 1)), "stderr_to_stdout": False,
        }
        if self.partition:
            params["partition"] = self.partition
        if self.gpus_per_cell:
            params["gpus_per_node"] = self.gpus_per_cell
        if self.cpus_per_cell:
            params["cpus_per_task"] = self.cpus_per_cell
        extra = dict(self.extra)
        if self.mem:
            extra["mem"] = self.mem  # as written: submitit's own `mem` takes gigabytes as a number
        if extra:
            params["additional_parameters"] = {k: (True if v == "" else v) for k, v in extra.items()}
        return params

    def describe(self, name: str, n_tasks: int) -> list[str]:
        """The array's ``#SBATCH`` lines, as ``--dry-run`` prints them."""
        p = self.sbatch(name, n_tasks)
        lines = [f"--job-name={name}", f"--array=0-{n_tasks - 1}%{p['array_parallelism']}",
                 f"--time={self.time_min}", f"--signal=USR2@{SIGNAL_DELAY_S}"]
        for key in ("partition", "gpus_per_node", "cpus_per_task"):
            if key in p:
                lines.append(f"--{key.replace('_', '-')}={p[key]}")
        for key, value in p.get("additional_parameters", {}).items():
            lines.append(f"--{key.replace('_', '-')}" + ("" if value is True else f"={value}"))
        return lines


def _require_slurm() -> None:
    for tool in ("sbatch", "srun", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            raise ConfigError(f"--launcher slurm: `{tool}` not found on PATH (is this a SLURM login node?)")


def _executor(folder: Path, opts: SlurmOptions, name: str, n_tasks: int):
    import submitit

    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=3)
    ex.update_parameters(**opts.sbatch(name, n_tasks))
    return ex


def _task_setup() -> None:
    """Progress lines in the task's log, and torch on the CPUs SLURM gave the task (not every core of the node)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        import torch

        torch.set_num_threads(int(cpus))


def _this_job() -> dict[str, str]:
    """The running task's job id and log paths (inside a submitit task)."""
    import submitit

    env = submitit.JobEnvironment()
    return {tags.SLURM_JOB: env.job_id, tags.SLURM_STDOUT: str(env.paths.stdout.resolve()),
            tags.SLURM_STDERR: str(env.paths.stderr.resolve())}


def requeue(job_id: str) -> bool:
    """Put this running job back in the queue (``scontrol requeue``); not a job that was cancelled."""
    state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    if state != "RUNNING":
        log.warning("job %s is %s: not requeued", job_id, state or "gone")
        return False
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if done.returncode != 0:
        log.warning("job %s: scontrol requeue failed: %s", job_id, done.stderr.strip())
        return False
    log.warning("job %s requeued: its cell resumes from the checkpoint when it runs again", job_id)
    return True


def _link_logs(logs_dir: Path, cell_hash: str, job: dict[str, str]) -> None:
    """``<logs>/<study>/cells/<hash>.out|.err`` -> this task's logs (the latest task of the cell)."""
    cells = logs_dir / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    for suffix, key in ((".out", tags.SLURM_STDOUT), (".err", tags.SLURM_STDERR)):
        link = cells / f"{cell_hash}{suffix}"
        tmp = cells / f".{cell_hash}{suffix}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(job[key])
        os.replace(tmp, link)


class _Task:
    """Base of the array tasks: submitit's checkpointing hook (see :meth:`checkpoint`)."""

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on SIGUSR2 outside training; the run is marked interrupted, then requeued."""
        import submitit

        try:
            self._interrupted()
        except Exception as e:  # noqa: BLE001 - requeue anyway: the claim timeout covers a run left RUNNING
            log.warning("could not mark the run interrupted before requeueing: %s", e)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def _interrupted(self) -> None:
        raise NotImplementedError


@dataclass
class CellTask(_Task):
    """One array task: run one cell of the study (by its hash), exactly as ``harness study run`` would."""

    study_file: str
    overrides: tuple[str, ...]
    tracking_uri: str | None
    runs_root: str
    logs_dir: str
    retry_failed: bool
    claim_timeout: float
    procs_per_cell: int = 1
    cell_hash: str = ""

    def __call__(self, cell_hash: str) -> str:
        self.cell_hash = cell_hash
        _task_setup()
        study = load_study(self.study_file, self.overrides)
        job = _this_job()
        _link_logs(Path(self.logs_dir), cell_hash, job)
        try:
            outcomes = run_study(study, uri=self.tracking_uri, runs_root=self.runs_root, retry_failed=self.retry_failed,
                                 progress=False, claim_timeout=self.claim_timeout, only=frozenset({cell_hash}),
                                 run_tags=job, procs_per_cell=self.procs_per_cell)
        except KeyboardInterrupt:  # SIGTERM / SIGUSR2: the cell checkpointed and is marked KILLED
            if requeue(job[tags.SLURM_JOB]):
                raise SystemExit(-1) from None  # as submitit after a requeue: no result, the job runs again
            raise
        if not outcomes:
            raise ConfigError(f"cell {cell_hash[:12]} is not in study {study.name} (was the study file changed?)")
        o = outcomes[0]
        if o.status == "failed":
            raise RuntimeError(f"cell {o.cell.name} ({cell_hash[:12]}) failed: {o.error}")
        return o.status

    def _interrupted(self) -> None:
        client = make_client(self.tracking_uri)
        study = load_study(self.study_file, self.overrides)
        exp = client.get_experiment_by_name(study.experiment)
        run = find_cell_runs(client, exp.experiment_id, study.name, study.cells).get(self.cell_hash) if exp else None
        if run is not None and run.info.status == "RUNNING" and run.data.tags.get(tags.SLURM_JOB) == _this_job()[tags.SLURM_JOB]:
            with_retries(client.set_terminated, run.info.run_id, "KILLED")


@dataclass
class SearchWorkerTask(_Task):
    """One array task: an Optuna worker of a search, on the search's shared storage."""

    job: Any  # harness.experiments.search.SearchJob

    def __call__(self, worker: int) -> str:
        import copy

        from harness.experiments.search import finish_search
        from harness.experiments.search.storage import load_or_create_study, requeue_interrupted

        _task_setup()
        job = copy.copy(self.job)
        job.worker, job.progress = worker, False
        optuna_study = load_or_create_study(job.storage, job.study_name, job.spec, worker=worker)
        requeue_interrupted(optuna_study)  # a trial this worker (or another) left when it was preempted
        me = _this_job()[tags.SLURM_JOB]
        try:
            job.run(optuna_study=optuna_study)
        except KeyboardInterrupt:  # the trial checkpointed and is marked interrupted
            if requeue(me):
                raise SystemExit(-1) from None
            raise
        finish_search(optuna_study, job, "FINISHED")  # the search is complete when a worker returns
        return "done"

    def _interrupted(self) -> None:
        pass  # a trial is marked interrupted by the objective itself; outside a trial there is nothing to mark


def _record(logs_dir: Path, rows: list[dict[str, str]]) -> None:
    logs_dir.mkdir(parents=True, exist_ok=True)
    with open(logs_dir / SUBMISSIONS, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def submissions(logs_dir: Path) -> dict[str, dict[str, str]]:
    """Cell hash (or ``worker<i>``) -> its latest submission (job id, time), from ``submissions.jsonl``."""
    out: dict[str, dict[str, str]] = {}
    path = logs_dir / SUBMISSIONS
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            out[row["key"]] = row
    return out


def _tag_parent(client, exp_id: str, kind: str, key: str, value: str, job_ids: list[str]) -> None:
    runs = client.search_runs([exp_id], filter_string=f"tags.`{tags.KIND}` = '{kind}' and tags.`{key}` = '{value}'",
                              max_results=5)
    for run in runs:
        old = run.data.tags.get(tags.SLURM_JOBS, "")
        with_retries(client.set_tag, run.info.run_id, tags.SLURM_JOBS, ",".join(filter(None, [old, *job_ids])))


def pending_cells(study: Study, *, uri: str | None, retry_failed: bool, claim_timeout: float) -> list:
    """The cells a submission would run: new, interrupted (stale heartbeat), and failed ones if asked."""
    client = make_client(uri)
    exp = client.get_experiment_by_name(study.experiment)
    runs = find_cell_runs(client, exp.experiment_id, study.name, study.cells) if exp else {}
    todo = ("new", "interrupted", "failed") if retry_failed else ("new", "interrupted")
    return [c for c in study.cells if cell_status(runs.get(c.hash), claim_timeout=claim_timeout) in todo]


@dataclass(frozen=True)
class Submission:
    """What was submitted: the job ids, one per task, and what each task runs."""

    job_ids: tuple[str, ...]
    keys: tuple[str, ...]
    logs_dir: Path

    def wait(self, poll: float = 2.0, timeout: float | None = None) -> dict[str, str]:
        """Block until no task is pending or running any more (a requeued task counts as pending);
        returns each job id's last state as SLURM still reports it (``COMPLETED``, ``FAILED``, ...;
        ``ENDED`` once SLURM has forgotten the job)."""
        start, last = time.time(), {}
        while True:
            states = queue_states(list(self.job_ids), every_state=True)
            last.update(states)
            if not any(states.get(j, "ENDED") in _ACTIVE for j in self.job_ids):
                return {j: last.get(j, "ENDED") for j in self.job_ids}
            if timeout is not None and time.time() - start > timeout:
                raise TimeoutError(f"SLURM tasks still active after {timeout:.0f} s: "
                                   + ", ".join(j for j in self.job_ids if states.get(j) in _ACTIVE))
            time.sleep(poll)


_ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
           "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "PREEMPTED")


def submit_study(study: Study, opts: SlurmOptions, *, overrides: tuple[str, ...] = (), uri: str | None = None,
                 runs_root: str = "runs", retry_failed: bool = False, claim_timeout: float = 300.0) -> Submission:
    """Submit one array task per pending cell (finished cells are skipped here, before submitting)."""
    _require_slurm()
    cells = pending_cells(study, uri=uri, retry_failed=retry_failed, claim_timeout=claim_timeout)
    logs_dir = Path(opts.logs, study.name).resolve()
    if not cells:
        return Submission((), (), logs_dir)
    task = CellTask(str(Path(study.path).resolve()), tuple(overrides), uri, str(Path(runs_root).resolve()),
                    str(logs_dir), retry_failed, claim_timeout, opts.ranks)
    ex = _executor(logs_dir, opts, f"{study.name}", len(cells))
    jobs = ex.map_array(task, [c.hash for c in cells])
    ids = [j.job_id for j in jobs]
    _record(logs_dir, [{"key": c.hash, "job_id": j, "submitted": time.time()} for c, j in zip(cells, ids)])
    client = make_client(uri)
    exp = client.get_experiment_by_name(study.experiment)
    if exp is not None:
        _tag_parent(client, exp.experiment_id, "study", tags.STUDY, study.name, ids)
    return Submission(tuple(ids), tuple(c.hash for c in cells), logs_dir)


def submit_search(job: Any, opts: SlurmOptions, workers: int) -> Submission:
    """Submit ``workers`` array tasks, each an Optuna worker of the planned search ``job``."""
    _require_slurm()
    logs_dir = Path(opts.logs, job.study.name).resolve()
    ex = _executor(logs_dir, opts, f"search-{job.study_name}", workers)
    jobs = ex.map_array(SearchWorkerTask(job), list(range(workers)))
    ids = [j.job_id for j in jobs]
    _record(logs_dir, [{"key": f"worker{i}", "job_id": j, "submitted": time.time()} for i, j in enumerate(ids)])
    client = make_client(job.tracking_uri)
    _tag_parent(client, job.experiment_id, "search", tags.SEARCH_ID, job.search_id, ids)
    return Submission(tuple(ids), tuple(f"worker{i}" for i in range(workers)), logs_dir)


def queue_states(job_ids: list[str], *, every_state: bool = False) -> dict[str, str]:
    """Job id (``ARRAY_TASK`` for array tasks) -> SLURM state, for the jobs ``squeue`` still knows (empty
    without SLURM). ``every_state``: ended jobs too, for as long as the controller keeps them (MinJobAge)."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    cmd = ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted({j.split("_")[0] for j in job_ids}))]
    out = subprocess.run(cmd + (["-t", "all"] if every_state else []), capture_output=True, text=True)
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.partition(" ")
        states[jid] = state.strip()
    return states
