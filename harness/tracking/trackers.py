"""Where a run's parameters, metrics and artifacts go.

The trainer talks to a small :class:`Tracker` protocol. Metrics are *buffered* and written only
when the trainer calls :meth:`Tracker.flush`, right after each checkpoint. The checkpoint itself
also holds the buffer (:meth:`Tracker.pending`), so a kill between writing the checkpoint and
flushing loses nothing: the resumed run re-sends those values (:meth:`Tracker.restore`), and
re-sending a value that did arrive is a no-op (same key, step, timestamp and value). Steps after
the checkpoint are recomputed, so a resumed run never logs a step twice.

A run that fails between checkpoints (a bad file, a full disk, any exception) still flushes what
it measured, so the failed run shows its curve up to the failure. The resumed run recomputes those
steps exactly; each tracker therefore reads, once, the last step its store holds for every metric
key (:func:`last_steps`) and drops a value at or before that step: every (key, step) is stored once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from harness.atomic import replacing
from harness.tracking.tags import DATA_CONTEXT


@dataclass(frozen=True)
class DatasetRecord:
    """One split a run reads, as MLflow's dataset inputs show it (the runs table's Dataset column)."""

    name: str
    """The split's name in the config (``train``, ``dev``, a test split's key)."""
    context: str
    """What the run uses it for: ``training``, ``validation`` or ``test``."""
    source: str
    """The manifest's path, as the config names it."""
    digest: str
    """A short content digest of the manifest (a changed manifest shows as a new dataset)."""
    utterances: int
    hours: float


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def flush(self) -> None: ...
    def pending(self) -> list: ...
    def restore(self, pending: list) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...
    def log_datasets(self, datasets: list[DatasetRecord]) -> None: ...


class LocalTracker:
    """Writes into the run folder: ``params.json``, ``tags.json``, ``metrics.jsonl`` (one line per
    metric value: step, key, value) and leaves artifacts where they are."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._buffer: list[dict[str, Any]] = []
        self._sent: dict[str, int] | None = None  # key -> last step in metrics.jsonl when first needed

    def _stored(self) -> dict[str, int]:
        if self._sent is None:
            self._sent = last_steps((r["key"], r["step"]) for r in self.history())
        return self._sent

    def log_params(self, params: dict[str, Any]) -> None:
        _write_json(self.dir / "params.json", params)

    def set_tags(self, tags: dict[str, str]) -> None:
        path = self.dir / "tags.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        _write_json(path, {**old, **tags})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        sent = self._stored()
        self._buffer.extend({"step": step, "key": k, "value": float(v)} for k, v in metrics.items() if step > sent.get(k, -1))

    def pending(self) -> list:
        return [dict(r) for r in self._buffer]

    def restore(self, pending: list) -> None:
        sent = self._stored()
        self._buffer[:0] = [r for r in pending if r["step"] > sent.get(r["key"], -1)]

    def flush(self) -> None:
        if not self._buffer:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in self._buffer)
            f.flush()
            os.fsync(f.fileno())
        self._buffer.clear()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass  # artifacts are already in the run folder

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        _write_json(self.dir / artifact_file, rows)

    def log_datasets(self, datasets: list[DatasetRecord]) -> None:
        _write_json(self.dir / "datasets.json", [asdict(d) for d in datasets])

    def history(self) -> list[dict[str, Any]]:
        path = self.dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def last_steps(points: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The last step of every metric key among ``(key, step)`` points."""
    out: dict[str, int] = {}
    for key, step in points:
        out[key] = max(step, out.get(key, step))
    return out


def _write_json(path: Path, obj: Any) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


class MlflowTracker:
    """Logs one run to MLflow (any tracking URI: a SQLite file, a folder, an ``mlflow server``).

    Metrics are buffered and sent with ``log_batch`` on :meth:`flush` (the trainer flushes right
    after each checkpoint), retried with backoff when the server is briefly unreachable: a
    restarted server loses nothing that a checkpoint covers, and a resumed run never logs a
    step twice.
    """

    _BATCH = 1000  # MLflow's limit of metrics per log_batch call

    def __init__(self, client, run_id: str, *, local_dir: str | Path | None = None, retries: int = 6) -> None:
        self.client, self.run_id, self.retries = client, run_id, retries
        self.local = LocalTracker(local_dir) if local_dir is not None else None
        self._buffer: list[tuple[str, float, int, int]] = []
        self._sent: dict[str, int] | None = None  # key -> last step the store holds, read once

    def _stored(self) -> dict[str, int]:
        if self._sent is None:
            keys = self._retry(self.client.get_run, self.run_id).data.metrics
            self._sent = last_steps(
                (key, m.step) for key in keys for m in self._retry(self.client.get_metric_history, self.run_id, key)
            )
        return self._sent

    def _retry(self, fn, *args, **kwargs):
        import time

        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception:  # noqa: BLE001 - any transport error; the last one is re-raised
                if attempt == self.retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 15.0)
        return None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, "None" if v is None else str(v)) for k, v in params.items()]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # params are immutable once logged
        for i in range(0, len(items), 100):
            self._retry(self.client.log_batch, self.run_id, params=items[i : i + 100])
        if self.local:
            self.local.log_params(params)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._retry(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        now, sent = int(time.time() * 1000), self._stored()
        self._buffer.extend((k, float(v), now, step) for k, v in metrics.items() if step > sent.get(k, -1))
        if self.local:
            self.local.log_metrics(metrics, step)

    def pending(self) -> list:
        return [list(m) for m in self._buffer]

    def restore(self, pending: list) -> None:
        sent = self._stored()
        self._buffer[:0] = [(k, float(v), int(t), int(s)) for k, v, t, s in pending if int(s) > sent.get(k, -1)]

    def flush(self) -> None:
        from mlflow.entities import Metric

        while self._buffer:
            chunk = self._buffer[: self._BATCH]
            self._retry(self.client.log_batch, self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk])
            del self._buffer[: len(chunk)]
        if self.local:
            self.local.flush()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        # MLflow appends to an existing table: a run finished twice (resume after a crash in its
        # last step) must not list every utterance twice, so an existing table is left as it is.
        folder, _, name = artifact_file.rpartition("/")
        if any(a.path == artifact_file for a in self._retry(self.client.list_artifacts, self.run_id, folder or None)):
            return
        columns = list(rows[0]) if rows else []
        data = {c: [r[c] for r in rows] for c in columns}
        self._retry(self.client.log_table, self.run_id, data=data, artifact_file=artifact_file)
        if self.local:
            self.local.log_table(rows, artifact_file)

    def log_datasets(self, datasets: list[DatasetRecord]) -> None:
        """Each split as an MLflow dataset input: its name, digest, manifest path as source, and a profile
        of utterances and hours (logging the same dataset to a run again adds nothing)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(
                Dataset(name=d.name, digest=d.digest, source_type="local", source=json.dumps({"uri": d.source}),
                        profile=json.dumps({"num_rows": d.utterances, "hours": round(d.hours, 3)})),
                tags=[InputTag(DATA_CONTEXT, d.context)],
            )
            for d in datasets
        ]
        self._retry(self.client.log_inputs, self.run_id, datasets=inputs)
        if self.local:
            self.local.log_datasets(datasets)
