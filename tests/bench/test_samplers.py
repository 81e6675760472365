"""The sampler benchmark on real LibriSpeech durations: both samplers cover every utterance once an epoch,
repeat themselves for one seed and resume mid-epoch exactly (the timings are printed, never asserted)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.bench import samplers

TSV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "texts" / "librispeech-dev-clean-2.tsv"


def test_both_samplers_are_complete_deterministic_and_resumable(capsys) -> None:
    if not TSV.is_file():
        pytest.skip(f"{TSV} not found (../shared/data/texts)")
    assert samplers.main([str(TSV), "--max-seconds", "60", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    for row in ("each utterance once an epoch", "same seed, same batches", "resume mid-epoch = uninterrupted"):
        assert f"| {row} | True | True |" in out, out
    assert "padding fraction" in out and "1,089 utterances" in out


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.tsv"
    bad.write_text("id\ttext\na\thello\n")
    assert samplers.main([str(bad)]) == 2
    assert "duration" in capsys.readouterr().err
    assert samplers.main([str(TSV), "--max-seconds", "0"]) == 2
