"""The LibriSpeech-960-shaped tree of the scale benchmark is what the harness's and Lhotse's LibriSpeech readers
take for the real corpus (the timings are printed by `python -m harness.bench.scale`, never asserted)."""
from __future__ import annotations

from pathlib import Path

import soundfile as sf

from harness.bench import scale
from harness.data.librispeech import librispeech_splits, read_librispeech
from harness.data.manifest import check_audio_files, read_manifest


def test_tree_is_librispeech_shaped(tmp_path: Path) -> None:
    assert scale.build_tree(tmp_path, 300) == 300
    assert librispeech_splits(tmp_path) == sorted(scale.SPLITS)
    utts = {s: read_librispeech(tmp_path, s) for s in scale.SPLITS}
    assert sum(map(len, utts.values())) == 300
    assert len(utts["train-other-500"]) > len(utts["train-clean-360"]) > len(utts["train-clean-100"])  # 960 h proportions
    every = [u for v in utts.values() for u in v]
    assert not check_audio_files(every[:50], decode=True)  # real FLACs, durations as their headers say
    assert all(0.09 < u.duration < 0.61 for u in every) and sf.info(every[0].audio).samplerate == 16000
    from lhotse.recipes import prepare_librispeech

    lh = prepare_librispeech(tmp_path / "LibriSpeech", output_dir=tmp_path / "lhotse", num_jobs=1)
    assert sum(len(m["supervisions"]) for m in lh.values()) == 300


def test_index_stage_writes_the_whole_manifest(tmp_path: Path) -> None:
    scale.build_tree(tmp_path / "tree", 120)
    out = scale.measure_stage("index tree -> manifest", tmp_path / "tree", tmp_path)
    assert out["seconds"] > 0 and out["rss_mb"] > 0
    assert len(read_manifest(tmp_path / "all.jsonl")) == 120
