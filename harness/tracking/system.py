"""System metrics of a run (CPU, memory, disk, network; GPU utilisation and memory where
``nvidia-ml-py`` is installed), through MLflow's own monitor, so the UI's "System metrics" charts fill.

The monitor samples every ``every`` seconds in a daemon thread and logs ``system/*`` metrics to the
run. A resumed run continues after the last step the store holds (never a step twice); what the
monitor had not yet sent when its process was killed is lost, which costs a few samples of a
curve and nothing the run's results depend on. A monitor that cannot start is a warning, never a
failed run.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

SAMPLE_EVERY = 10.0
"""Seconds between samples (MLflow's default)."""


@contextmanager
def system_metrics(client, run_id: str, *, every: float = SAMPLE_EVERY) -> Iterator[None]:
    """Log system metrics to ``run_id`` (on ``client``'s store) while the block runs."""
    monitor = None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=every, resume_logging=True,
                                       tracking_uri=client.tracking_uri)
        monitor.start()
    except Exception as e:  # noqa: BLE001 - a missing psutil or an unreachable store must not fail the run
        log.warning("system metrics are not logged for run %s: %s", run_id, e)
        monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()
