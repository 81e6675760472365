"""Where a search lives (an Optuna storage) and how its dead or interrupted trials are queued again."""
from __future__ import annotations


import contextlib
import hashlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import filelock
import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.config import ConfigError, SourceMap
from harness.tracking.store import with_retries
from harness.experiments.search.trials import (
    ATTR_ERROR,
    ATTR_HEARTBEAT,
    ATTR_INTERRUPTED,
    ATTR_METRIC,
    ATTR_RETRIES,
    ATTR_RETRY_OF,
    ATTR_RUN_ID,
    MAX_RETRIES,
)
from harness.experiments.search.spec import SearchSpec

log = logging.getLogger("harness.search")


DEFAULT_SQLITE = "sqlite:///optuna.db"


DEFAULT_JOURNAL = "optuna-journal.log"


def resolve_storage(storage: str | None, *, workers: int = 1) -> str:
    """``None`` -> ``sqlite:///optuna.db`` for one worker, the journal file ``optuna-journal.log`` for
    several. A URL (``sqlite:///``, ``postgresql://``) is an RDB storage; anything else a journal file."""
    if storage is None:
        return DEFAULT_SQLITE if workers == 1 else DEFAULT_JOURNAL
    if storage.startswith("sqlite:") and workers > 1:
        raise ConfigError(
            f"--storage {storage}: SQLite is unsafe for {workers} parallel workers; use a journal file "
            f"(--storage {DEFAULT_JOURNAL}) on one machine or a PostgreSQL URL for many"
        )
    if "://" not in storage and storage.endswith((".db", ".sqlite", ".sqlite3")):
        raise ConfigError(f"--storage {storage}: looks like a SQLite file; write it as a URL, sqlite:///{storage}")
    return storage


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for :func:`resolve_storage`'s string."""
    if "://" in storage:
        kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite:") else {}
        return optuna.storages.RDBStorage(storage, engine_kwargs=kwargs)
    from optuna.storages.journal import JournalFileBackend

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


def safe_url(storage: str) -> str:
    """The storage for display and tags, without a password."""
    if "://" in storage and "@" in storage:
        scheme, rest = storage.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return storage


def requeue(study: optuna.Study, frozen: FrozenTrial) -> None:
    """Queue a copy of an unfinished trial (same parameters, attributes and reported values); the
    copy resumes the original's checkpoint. System attributes are copied so that e.g. the grid
    sampler keeps the trial's grid point."""
    attrs = {k: v for k, v in frozen.user_attrs.items() if k not in (ATTR_HEARTBEAT, ATTR_INTERRUPTED)}
    attrs[ATTR_RETRY_OF] = frozen.number
    attrs[ATTR_RETRIES] = int(frozen.user_attrs.get(ATTR_RETRIES, 0)) + 1
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs=attrs, system_attrs=dict(frozen.system_attrs), intermediate_values=frozen.intermediate_values,
        )
    )
    log.info("trial %d did not finish; queued again (retry %d)", frozen.number, attrs[ATTR_RETRIES])


def fail_stale_trials(study: optuna.Study, *, grace_period: float, client: Any | None = None) -> list[int]:
    """Fail RUNNING trials without a heartbeat for ``grace_period`` seconds (their worker died) and
    queue each again, up to :data:`MAX_RETRIES` times. Returns the failed trial numbers.

    Optuna's own heartbeat exists only for RDB storages; this one works with every storage.
    """
    now, failed = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = float(t.user_attrs.get(ATTR_HEARTBEAT, 0.0))
        started = t.datetime_start.timestamp() if t.datetime_start else 0.0
        if now - max(beat, started) < grace_period:
            continue
        give_up = int(t.user_attrs.get(ATTR_RETRIES, 0)) >= MAX_RETRIES
        try:
            if give_up:  # counted as a failure from now on: the search moves on to other parameters
                # (no public Optuna API sets an attribute on another worker's trial)
                study._storage.set_trial_user_attr(t._trial_id, ATTR_ERROR, f"its worker died {MAX_RETRIES + 1} times")
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):
            continue  # another worker failed it first (UpdateFinishedTrialError is a RuntimeError)
        log.warning("trial %d: no heartbeat for %.0f s, failed", t.number, now - max(beat, started))
        failed.append(t.number)
        if not give_up:
            requeue(study, study.get_trials(deepcopy=False)[t.number])
        elif client is not None and t.user_attrs.get(ATTR_RUN_ID):
            with contextlib.suppress(Exception):
                with_retries(client.set_terminated, t.user_attrs[ATTR_RUN_ID], "KILLED")
    return failed


def requeue_interrupted(study: optuna.Study) -> None:
    """Trials stopped by Ctrl-C / SIGTERM are FAIL; queue each once more so that they resume."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(ATTR_RETRY_OF) for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get(ATTR_INTERRUPTED) and t.number not in retried:
            requeue(study, t)


def creation_lock(study: optuna.Study, storage: str) -> filelock.BaseFileLock:
    """A lock shared by this machine's workers of one study (any process, any runs folder)."""
    where = storage if "://" in storage else os.path.abspath(storage)
    key = hashlib.sha1(f"{where}\0{study.study_name}".encode()).hexdigest()[:16]
    return filelock.FileLock(Path(tempfile.gettempdir()) / f"harness-optuna-{key}.lock", thread_local=False)


def load_or_create_study(
    storage: str, study_name: str, spec: SearchSpec, *, worker: int = 0, where: SourceMap | None = None
) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=open_storage(storage), study_name=study_name, direction=spec.direction,
            sampler=spec.make_sampler(worker=worker), pruner=spec.make_pruner(), load_if_exists=True,
        )
    metric = study.user_attrs.get(ATTR_METRIC)
    if study.direction.name.lower() != spec.direction or (metric is not None and metric != spec.metric):
        at = where("search.objective") if where else ""
        raise ConfigError(
            f"{at}search.objective: Optuna study {study_name!r} in {safe_url(storage)} was created for "
            f"{study.direction.name.lower()} {metric}; the study file says {spec.direction} {spec.metric}. "
            f"Use --study-name for a new search"
        )
    return study


def check_default_storages(storage: str, study_name: str, *, explicit: bool) -> None:
    """Refuse to silently start over: the default storage depends on the number of workers."""
    if explicit:
        return
    other = DEFAULT_JOURNAL if storage == DEFAULT_SQLITE else DEFAULT_SQLITE
    other_path = other.removeprefix("sqlite:///")
    if not Path(other_path).exists():
        return
    try:
        names = {s.study_name for s in optuna.get_all_study_summaries(open_storage(other), include_best_trial=False)}
    except Exception:  # noqa: BLE001 - an unreadable file is not ours to judge here
        return
    if study_name in names:
        raise ConfigError(
            f"Optuna study {study_name!r} is in {other} (another number of workers used another default storage); "
            f"pass --storage {other} to continue it, or --study-name for a new search"
        )
