"""One cell trained by several processes on this machine (data parallel, as under ``torchrun``).

The study runner keeps the cell's claim, heartbeat and system metrics in its own process and starts
``n`` training ranks as child processes, with the environment ``torchrun`` gives
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); the trainer joins
their process group (:func:`harness.run.distributed.from_env`), rank 0 logs into the cell's MLflow
run and writes the checkpoints. A cell on a GPU node takes one rank per GPU.

Why not ``torch.distributed.run`` itself: its agent answers a stop by killing the workers after a
fixed grace period, where a rank must be let finish its step and checkpoint however long that takes.
Here a stop is forwarded once to every rank and the ranks agree on the step at which they stop
(:meth:`~harness.run.distributed.Dist.any`); a rank that fails takes the others down, so nothing
waits forever in a collective.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from harness.config import RunConfig

GRACE = 20.0
"""Seconds the other ranks get to exit after one rank failed, before they are killed."""


class RankFailed(RuntimeError):
    """A training rank of a multi-process cell raised; carries its message, traceback and step."""

    def __init__(self, message: str, tb: str = "", step: int | None = None) -> None:
        super().__init__(message)
        self.traceback, self.step = tb, step


@dataclass(frozen=True)
class RankJob:
    """What every rank needs: the cell's config and folder, and the MLflow run rank 0 logs into."""

    config: RunConfig
    out_dir: str
    tracking_uri: str | None
    run_id: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STOPPED = 130
"""A rank's exit code after a stop signal: it finished its step and (rank 0) checkpointed."""


def _threads_per_rank(n: int) -> int:
    """The CPUs this process may use (SLURM's ``--cpus-per-task``, else its affinity) shared by ``n`` ranks."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    total = int(cpus) if cpus.isdigit() else len(os.sched_getaffinity(0))
    return max(1, total // n)


def train_ranks(job: RankJob, n: int, *, progress: bool = False) -> dict[str, float]:
    """Train the cell on ``n`` processes; the final metrics (rank 0's), or :class:`RankFailed`.

    A stop signal in this process (KeyboardInterrupt) is forwarded once to every rank, which stop at the
    same step boundary (rank 0 checkpoints) and exit; it is then raised again here."""
    work = Path(job.out_dir) / ".ranks"
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "job.pkl"
    spec.write_bytes(pickle.dumps(job))
    for old in work.glob("rank*.json"):
        old.unlink()
    port, threads = _free_port(), _threads_per_rank(n)
    procs = []
    for rank in range(n):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n),
               "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "HARNESS_PROGRESS": "1" if progress and rank == 0 else "0"}
        # Own session: a terminal's Ctrl-C reaches the ranks once, through this process.
        procs.append(subprocess.Popen([sys.executable, "-m", "harness.experiments.ranks", str(spec), str(work)],
                                      env=env, start_new_session=True))
    try:
        with _stop_signals():
            codes, first = _wait(procs)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    if first is not None:  # the first rank to fail says why (the others' errors follow from it)
        blob = _read(work / f"rank{first}.json")
        if blob is not None:
            raise RankFailed(blob["error"], blob.get("traceback", ""), blob.get("step"))
        raise RankFailed(f"training rank {first} of {n} exited with code {codes[first]} (its output is in this log)")
    if STOPPED in codes:
        raise KeyboardInterrupt("the training ranks were stopped")
    blob = _read(work / "rank0.json")
    if blob is None:
        raise RankFailed("training rank 0 exited without a result")
    return blob["metrics"]


@contextlib.contextmanager
def _stop_signals():
    """SIGTERM, SIGINT and SIGUSR2 (SLURM's warning before a time limit) raise KeyboardInterrupt here while
    the ranks train, so that the stop is forwarded to them (and not, say, answered by submitit's own
    handler exiting this process with the ranks still running)."""
    from harness import interrupts

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, interrupts.raise_stop) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stop(procs: list[subprocess.Popen]) -> None:
    """Forward a stop to every rank and wait for them (they finish the step and checkpoint); a second
    stop while waiting kills them."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    try:
        _wait(procs)
    except KeyboardInterrupt:
        for p in procs:
            p.kill()
        raise


def _wait(procs: list[subprocess.Popen]) -> tuple[list[int], int | None]:
    """Wait for every rank: their exit codes and the first to fail (None when none failed). Once one
    fails, the others are asked to stop and get :data:`GRACE` seconds, then are killed."""
    first, failed_at = None, None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes, first
        if first is None:
            bad = [r for r, c in enumerate(codes) if c not in (None, 0, STOPPED)]
            if bad:
                first, failed_at = bad[0], time.monotonic()
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
        if failed_at is not None and time.monotonic() - failed_at > GRACE:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)


def _rank_main(spec: str, work: str) -> int:
    """One rank: train the job; rank 0 logs into the MLflow run. Each rank writes ``rank<r>.json`` in
    ``work``: rank 0 the final metrics, a failed rank its error."""
    import logging

    from harness import interrupts
    from harness.run import distributed
    from harness.run.trainer import run_training
    from harness.tracking.store import make_client
    from harness.tracking.trackers import MlflowTracker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    interrupts.install()  # a stop before the training loop is recorded and honoured at its first step
    job: RankJob = pickle.loads(Path(spec).read_bytes())
    rank = int(os.environ["RANK"])
    main, out = rank == 0, Path(work) / f"rank{rank}.json"
    tracker = MlflowTracker(make_client(job.tracking_uri), job.run_id) if main else None
    try:
        res = run_training(job.config, job.out_dir, tracker=tracker, progress=os.environ.get("HARNESS_PROGRESS") == "1")
        if main:
            out.write_text(json.dumps({"metrics": res.metrics}))
        return 0
    except KeyboardInterrupt:
        return STOPPED
    except Exception as e:  # noqa: BLE001 - reported to the study runner, which records the failure
        out.write_text(json.dumps({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                                   "step": getattr(e, "step", None)}))
        traceback.print_exc()
        return 1
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1], sys.argv[2]))
