"""A cell trained by two processes (``procs_per_cell=2``, data parallel over gloo), through the study
runner: a rank's failure fails the cell with that rank's own error (not the collective's), what was
logged before it is kept, and the retried cell resumes into the same run with no step logged twice."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.experiments.grid import run_study
from harness.experiments.study import load_study
from harness.tracking.store import make_client

from tests.experiments.test_reliability import (assert_no_duplicates, cell_runs, failing_at_step_three, steps_of,
                                                write_study)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def test_a_two_process_cell_fails_with_its_ranks_error_then_resumes_into_the_same_run(tmp_path: Path, libri) -> None:
    base, real = failing_at_step_three(tmp_path, libri, max_steps=6)
    path = write_study(tmp_path, "two_ranks", base)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    [first] = run_study(load_study(path), uri=uri, runs_root=tmp_path / "runs", progress=False, procs_per_cell=2)
    assert first.status == "failed" and "dev.flac" in first.error, first.error
    client = make_client(uri)
    assert steps_of(client, first.run_id) == [1, 2, 3]
    run = client.get_run(first.run_id)
    assert "dev.flac" in run.data.tags["harness.error"]
    assert run.data.metrics["dist/world_size"] == 2.0

    (tmp_path / "dev.flac").write_bytes(real)
    [again] = run_study(load_study(path), uri=uri, runs_root=tmp_path / "runs", progress=False, retry_failed=True,
                        procs_per_cell=2)
    assert again.status == "done" and again.run_id == first.run_id, again.error
    assert steps_of(client, first.run_id) == [1, 2, 3, 4, 5, 6]
    assert_no_duplicates(client, first.run_id)
    assert "test/mini/wer" in again.metrics
    assert list(cell_runs(uri, path).values())[0].info.status == "FINISHED"


def test_procs_per_cell_below_one_is_refused(tmp_path: Path, libri) -> None:
    base, _ = failing_at_step_three(tmp_path, libri)
    path = write_study(tmp_path, "no_ranks", base)
    with pytest.raises(ValueError, match="procs_per_cell: expected >= 1, got 0"):
        run_study(load_study(path), uri=f"sqlite:///{tmp_path}/mlflow.db", procs_per_cell=0)
