"""Many workers, one store: heartbeats, elections (claims on cells, one parent run), staleness.

Workers share no lock, only the MLflow store (SQLite, PostgreSQL, a remote server). A worker that
trains beats (:class:`Heartbeat`); one that wants a cell or a parent run creates a run for it and
then reads every contender's (:func:`elect`): the earliest wins, the others delete theirs.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from harness.tracking import tags
from harness.tracking.store import with_retries

log = logging.getLogger("harness.tracking")

CLAIM_TIMEOUT = 300.0
"""Seconds without a heartbeat after which a RUNNING cell counts as abandoned."""
HEARTBEAT_EVERY = 30.0
CLAIM_SETTLE = 0.5
"""Seconds a contender waits before reading the other contenders: longer than a store's commit takes."""


class Heartbeat:
    """Calls ``beat()`` every ``every`` seconds from a daemon thread while the ``with`` block runs, so
    other workers can tell a live worker from a dead one. A failed beat is logged once; with
    ``stop_on_error`` the beating then stops (e.g. the trial was declared stale by another worker)."""

    def __init__(self, beat: Callable[[], Any], every: float = HEARTBEAT_EVERY, *, name: str = "harness-heartbeat",
                 stop_on_error: bool = False) -> None:
        if not (math.isfinite(every) and every > 0):
            raise ValueError(f"heartbeat interval: expected a finite number of seconds > 0, got {every}")
        self.beat, self.every, self.name, self.stop_on_error = beat, every, name, stop_on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)

    def _loop(self) -> None:
        warned = False
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001 - a missed beat is harmless; the next one retries
                if not warned:
                    log.warning("%s: a heartbeat failed: %s", self.name, e)
                    warned = True
                if self.stop_on_error:
                    return
            self._stop.wait(self.every)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_heartbeat(client, run_id: str, every: float = HEARTBEAT_EVERY) -> Heartbeat:
    """A heartbeat on an MLflow run's :data:`~harness.tracking.tags.HEARTBEAT` tag."""
    return Heartbeat(lambda: client.set_tag(run_id, tags.HEARTBEAT, str(time.time())), every)


def is_alive(run: Any, *, claim_timeout: float = CLAIM_TIMEOUT) -> bool:
    """A RUNNING run whose worker beat within ``claim_timeout`` seconds."""
    beat = float(run.data.tags.get(tags.HEARTBEAT, 0) or 0)
    return run.info.status == "RUNNING" and time.time() - beat < claim_timeout


def elect(client, experiment_id: str, mine: str, filter_string: str, *, live: Callable[[Any], bool] = lambda run: True) -> str:
    """Among the runs matching ``filter_string`` (``mine`` among them), the earliest: ``(start time, run id)``.

    A run's start time is stamped by its client before the store commits it, so a contender that
    started a moment before us may not be visible yet: wait :data:`CLAIM_SETTLE` seconds before
    reading, so that every run stamped earlier than ours is in the store when we look (otherwise
    two workers could each see themselves first, or one could adopt a run whose owner is about to
    delete it). A loser deletes its own run.
    """
    time.sleep(CLAIM_SETTLE)
    runs = with_retries(client.search_runs, [experiment_id], filter_string=filter_string, max_results=1000)
    contenders = [r for r in runs if live(r) or r.info.run_id == mine]
    winner = min(contenders, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if contenders else mine
    if winner != mine:
        with_retries(client.delete_run, mine)
    return winner


def claim_cell(client, experiment_id: str, study: str, cell_hash: str, generation: str, *,
               claim_timeout: float = CLAIM_TIMEOUT) -> str | None:
    """Atomically claim a cell among concurrent workers sharing one tracking store.

    Every contender creates a small *claim* run for ``(cell_hash, generation)`` and then reads all
    live claims for the same pair (:func:`elect`): the earliest wins, the others delete theirs and
    move on. ``generation`` names what is being claimed (``new`` or the abandoned run being
    resumed), so an old claim never blocks a new round. Returns the winning claim's run id, or None.
    """
    claim = with_retries(
        client.create_run, experiment_id, run_name=f"claim:{cell_hash[:12]}",
        tags={tags.KIND: "claim", tags.STUDY: study, tags.CELL_HASH: cell_hash, tags.GENERATION: generation},
    ).info.run_id
    now_ms = time.time() * 1000
    winner = elect(
        client, experiment_id, claim,
        (f"tags.`{tags.KIND}` = 'claim' and tags.`{tags.CELL_HASH}` = '{cell_hash}' "
         f"and tags.`{tags.GENERATION}` = '{generation}'"),
        live=lambda c: now_ms - c.info.start_time < claim_timeout * 1000,
    )
    return claim if winner == claim else None


def parent_run(client, experiment_id: str, match: dict[str, str], *, run_name: str,
               on_create: Callable[[str], None] | None = None) -> tuple[str, bool]:
    """The one parent run whose tags include ``match`` (a study's, a search's), created and elected
    among concurrent workers when there is none. Returns ``(run id, created by this call)``;
    ``on_create(run_id)`` runs once, in the worker whose run won."""
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in match.items())
    runs = with_retries(client.search_runs, [experiment_id], filter_string=flt, max_results=100)
    if runs:
        run_id = min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id
        with_retries(client.update_run, run_id, status="RUNNING")
        return run_id, False
    mine = with_retries(client.create_run, experiment_id, run_name=run_name, tags=dict(match)).info.run_id
    winner = elect(client, experiment_id, mine, flt)
    if winner == mine and on_create is not None:
        on_create(mine)
    return winner, winner == mine


def find_parent_runs(client, experiment_id: str, match: dict[str, str]) -> list[Any]:
    """Every live (not deleted) parent run whose tags include ``match``: read again, never cached."""
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in match.items())
    return with_retries(client.search_runs, [experiment_id], filter_string=flt, max_results=100)
