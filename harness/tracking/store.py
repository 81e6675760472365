"""The MLflow store: which one, a client that fails early, experiments, retries, provenance tags."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.tracking import tags
from harness.tracking.ui import experiment_tags

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite file ``mlflow.db`` here."""
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


def artifact_location(uri: str, name: str) -> str | None:
    """For a SQLite store, keep artifacts beside the database file (MLflow would use ./mlruns of
    whatever folder the command runs in); other stores choose their own location."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :]).resolve()
    return (db.parent / "mlartifacts" / name).as_uri()


def experiment_id(client, name: str) -> str:
    """The id of the experiment ``name``, created when missing (by whichever worker gets there first).

    It carries MLflow's model-training kind and the harness's saved view of its cells
    (:mod:`harness.tracking.ui`); an experiment of an older store gets them the first time the harness
    opens it, and a tag the user changed keeps the user's value.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name),
                                            tags=experiment_tags())
        except Exception:  # noqa: BLE001 - another worker created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    for key, value in experiment_tags().items():
        if key not in exp.tags:
            with_retries(client.set_experiment_tag, exp.experiment_id, key, value)
    return exp.experiment_id


def with_retries(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call the MLflow client, retrying briefly: parallel workers share one store (SQLite locks,
    a server restarting)."""
    delay = 0.5
    for attempt in range(6):
        try:
            return fn(*args, **kwargs)
        except Exception:
            if attempt == 5:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    return None


def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_tags() -> dict[str, str]:
    """Provenance of a run: the code's commit and the versions it ran with."""
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


def record_failure(client, run_id: str, error: BaseException, tb: str, *, extra_tags: dict[str, str] | None = None) -> None:
    """Mark a run FAILED: its traceback as ``error.txt``, the error as a tag, the peak memory (the
    first thing to look at after an OOM) and the failed step where the error carries one."""

    message = f"{type(error).__name__}: {error}"
    try:
        with_retries(client.log_text, run_id, tb, "error.txt")
    except Exception:  # noqa: BLE001 - the tags and the status matter more than the artifact
        pass
    values = {tags.ERROR: message[:5000], tags.PEAK_MEMORY: peak_memory(), **(extra_tags or {})}
    if getattr(error, "step", None) is not None:
        values[tags.FAILED_STEP] = str(error.step)
    for key, value in values.items():
        with_retries(client.set_tag, run_id, key, value)
    with_retries(client.set_terminated, run_id, "FAILED")
