"""``harness study search`` and ``harness study dashboard``: Optuna searches from a study file's ``search:`` section.

    harness study search STUDY.yaml [--n-trials N] [--storage URL] [--study-name NAME] [--workers N]
                                    [--tracking-uri URI] [--runs-root DIR] [--timeout SECONDS]
    harness study dashboard STUDY.yaml [--storage URL] [--port 8080] [--host 127.0.0.1]

Registered in :mod:`harness.cli.app` as ``harness study search`` and ``harness study dashboard``
(and under their old top-level names).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import click

from harness.cli.common import (POSITIVE_INT, PORT, POSITIVE_SECONDS, ensure_port_free, friendly as _friendly,
                                make_slurm_options, run_server, slurm_options)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _ensure_logging() -> None:
    # Run standalone (not under the `harness` group, which configures logging), still show progress lines.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@click.command("search")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--n-trials", type=POSITIVE_INT, default=None,
              help="Total trials of the study (default: search.n_trials). Re-running continues up to it.")
@click.option("--storage", default=None,
              help="Optuna storage: a database URL (sqlite:///optuna.db, postgresql://...) or a journal file path. "
                   "Default: sqlite:///optuna.db for one worker, optuna-journal.log for several.")
@click.option("--study-name", default=None, help="Optuna study name (default: the study file's name).")
@click.option("--workers", type=POSITIVE_INT, default=1, show_default=True,
              help="Local worker processes sharing the storage.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")
@click.option("--runs-root", default="runs", show_default=True, help="Folder for checkpoints and local outputs.")
@click.option("--timeout", type=POSITIVE_SECONDS, default=None,
              help="Seconds (> 0) after which no new trial starts (default: search.timeout).")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on for one worker).")
@slurm_options
@_friendly
def search_command(study_file: str, n_trials: int | None, storage: str | None, study_name: str | None, workers: int,
                   tracking_uri: str | None, runs_root: str, timeout: float | None, progress: bool | None,
                   launcher: str = "local", wait: bool = False, **slurm) -> None:
    """Run (or continue) the Optuna search of STUDY_FILE; every trial is an MLflow run. With --launcher slurm,
    the --workers are SLURM array tasks on the study's shared storage (a database URL or a journal file)."""
    from optuna.trial import TrialState

    from harness.experiments.search import resolve_storage, run_search, safe_url
    from harness.experiments.study import load_study

    _ensure_logging()
    if launcher == "slurm":
        _submit_search(load_study(study_file), make_slurm_options(**slurm), wait=wait, n_trials=n_trials,
                       storage=storage, study_name=study_name, workers=workers, tracking_uri=tracking_uri,
                       runs_root=runs_root, timeout=timeout)
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    st = load_study(study_file)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        result = run_search(
            st, n_trials=n_trials, storage=storage, study_name=study_name, workers=workers, tracking_uri=tracking_uri,
            runs_root=runs_root, timeout=timeout, progress=workers == 1 if progress is None else progress,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    trials = result.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    click.echo(
        f"\nstudy {result.study_name}: {count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
        f"{count[TrialState.FAIL]} failed"
    )
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    if completed:
        best = result.best_trial
        click.echo(f"best trial {best.number}: {best.value:.4g}  {best.params}")
    used = resolve_storage(storage, workers=workers)
    click.echo(f"dashboard: harness dashboard {study_file} --storage {safe_url(used)}")


def _default_storage(study_name: str) -> str:
    """The storage ``harness search`` used by default: the one that holds the study, else the one that exists."""
    import optuna

    from harness.experiments.search import DEFAULT_JOURNAL, DEFAULT_SQLITE, open_storage

    found = [s for s, path in ((DEFAULT_SQLITE, "optuna.db"), (DEFAULT_JOURNAL, DEFAULT_JOURNAL)) if Path(path).exists()]
    for storage in found:
        try:
            names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(storage), include_best_trial=False)}
        except Exception as e:  # noqa: BLE001 - unreadable: not the one
            click.echo(f"{storage}: not readable as an Optuna storage ({e})", err=True)
            continue
        if study_name in names:
            return storage
    if found:
        return found[0]
    raise click.ClickException(
        f"no Optuna storage here (optuna.db or {DEFAULT_JOURNAL}); run `harness search` first or pass --storage"
    )


def _dashboard_executable() -> list[str]:
    """The optuna-dashboard program: next to this Python first (the same virtual environment), else on PATH."""
    beside = Path(sys.executable).parent / "optuna-dashboard"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("optuna-dashboard")
    if found:
        return [found]
    raise click.ClickException("optuna-dashboard is not installed: pip install optuna-dashboard")


def _submit_search(st, opts, *, wait: bool, workers: int, storage: str | None, **plan) -> None:
    from harness.experiments.search import plan_search, tally
    from harness.experiments.slurm import submit_search

    if storage is None:
        storage = "optuna-journal.log"  # workers in several processes (and nodes): never the single-writer SQLite
    if storage.startswith("sqlite"):
        raise click.UsageError("--launcher slurm: --storage must be a journal file or a database server URL "
                               "(SQLite is unsafe for workers on several processes)")
    plan["runs_root"] = str(Path(plan["runs_root"]).resolve())
    if "://" not in storage:
        storage = str(Path(storage).resolve())  # the tasks' working directory may differ
    optuna_study, job = plan_search(st, storage=storage, workers=workers, **plan)
    sub = submit_search(job, opts, workers)
    click.echo(f"search {job.study_name}: submitted {workers} SLURM workers ({', '.join(sub.job_ids)}); logs in {sub.logs_dir}")
    if wait:
        states = sub.wait()
        n = tally(optuna_study)
        click.echo("ended: " + ", ".join(f"{j} {s}" for j, s in states.items()) + f"; {n['counted']} trials counted")
        if any(s not in ("COMPLETED", "ENDED") for s in states.values()):
            raise SystemExit(1)


@click.command("dashboard")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--storage", default=None, help="Optuna storage URL or journal file (default: the one `harness search` used).")
@click.option("--port", default=8080, show_default=True, type=PORT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).")
@_friendly
def dashboard_command(study_file: str, storage: str | None, port: int, host: str) -> None:
    """Start optuna-dashboard on the search storage of STUDY_FILE."""
    from harness.experiments.search import safe_url
    from harness.experiments.study import load_study

    st = load_study(study_file)
    storage = storage or _default_storage(st.name)
    cmd = [*_dashboard_executable(), storage, "--host", host, "--port", str(port)]  # a list: no shell
    ensure_port_free(host, port, "optuna-dashboard")
    click.echo(f"optuna-dashboard for {safe_url(storage)} at http://{host}:{port}  (study {st.name}; Ctrl-C to stop)")
    run_server(cmd, program="optuna-dashboard")
