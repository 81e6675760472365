"""Where a run's parameters, metrics and artifacts go.

The trainer talks to a small :class:`Tracker` protocol. Metrics are *buffered* and written only
when the trainer calls :meth:`Tracker.flush`, which it does right after each checkpoint: whatever
a tracker holds is then always covered by a checkpoint, so a run that is killed and resumed
recomputes the lost steps and never logs a step twice.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def flush(self) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None: ...


class LocalTracker:
    """Writes into the run folder: ``params.json``, ``tags.json``, ``metrics.jsonl`` (one line per
    metric value: step, key, value) and leaves artifacts where they are."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._buffer: list[dict[str, Any]] = []

    def log_params(self, params: dict[str, Any]) -> None:
        _write_json(self.dir / "params.json", params)

    def set_tags(self, tags: dict[str, str]) -> None:
        path = self.dir / "tags.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        _write_json(path, {**old, **tags})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._buffer.extend({"step": step, "key": k, "value": float(v)} for k, v in metrics.items())

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

    def history(self) -> list[dict[str, Any]]:
        path = self.dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
