"""Tracking: where a run's parameters, curves and artifacts go, and how workers share one store.

- :mod:`~harness.tracking.trackers`: the :class:`Tracker` protocol a run logs through (local files, MLflow).
- :mod:`~harness.tracking.store`: the MLflow store, its client, experiments, retries, provenance.
- :mod:`~harness.tracking.liveness`: heartbeats, claims and parent-run elections among workers.
- :mod:`~harness.tracking.tags`: every tag name the harness writes.

This layer knows nothing of studies or training: it is given names and run ids.
"""
