"""Lhotse manifests wherever a manifest is accepted: built by Lhotse's own LibriSpeech recipe from the real
sample, read as the harness's LibriSpeech reader reads the tree, converted both ways, refused where a cut is
not one whole recording, and trained on."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from harness.data.lhotse_manifests import lhotse_kind, read_lhotse, write_lhotse
from harness.data.librispeech import read_librispeech
from harness.data.manifest import ManifestError, read_manifest, write_manifest
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def prepared(librispeech_root: Path, tmp_path_factory) -> Path:
    from lhotse.recipes import prepare_librispeech

    out = tmp_path_factory.mktemp("lhotse")
    parts = prepare_librispeech(librispeech_root / "LibriSpeech", output_dir=out, num_jobs=1)
    from lhotse import CutSet

    for part, m in parts.items():
        CutSet.from_manifests(recordings=m["recordings"], supervisions=m["supervisions"]).to_file(
            out / f"librispeech_cuts_{part}.jsonl.gz")
    return out


def _same(a, b) -> None:
    key = lambda u: u.id  # noqa: E731
    assert [(u.id, Path(u.audio).resolve(), u.text, round(u.duration, 2), u.speaker) for u in sorted(a, key=key)] == \
           [(u.id, Path(u.audio).resolve(), u.text, round(u.duration, 2), u.speaker) for u in sorted(b, key=key)]


@pytest.mark.parametrize("split", ["dev-clean", "test-clean", "train-clean-100"])
def test_lhotse_recipe_manifests_read_as_the_tree(prepared: Path, librispeech_root: Path, split: str) -> None:
    ours = read_librispeech(librispeech_root, split)
    cuts = prepared / f"librispeech_cuts_{split}.jsonl.gz"
    sups = prepared / f"librispeech_supervisions_{split}.jsonl.gz"
    assert lhotse_kind(cuts) == "cuts" and lhotse_kind(sups) == "supervisions"
    _same(read_manifest(cuts), ours)  # a CutSet
    _same(read_manifest(sups), ours)  # supervisions, the recordings found beside them


def test_round_trip_both_ways(prepared: Path, libri, tmp_path: Path) -> None:
    utts = libri["dev-clean"]
    write_manifest(tmp_path / "dev.jsonl", utts)
    assert lhotse_kind(tmp_path / "dev.jsonl") is None  # a harness manifest is not mistaken for Lhotse's
    write_lhotse(read_manifest(tmp_path / "dev.jsonl"), tmp_path / "dev_cuts.jsonl.gz")
    _same(read_manifest(tmp_path / "dev_cuts.jsonl.gz"), utts)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    rows = [json.loads(x) for x in gzip.open(src, "rt")]
    edit(rows)
    with gzip.open(dst, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return dst


def test_refused_with_one_named_reason(prepared: Path, tmp_path: Path) -> None:
    cuts = prepared / "librispeech_cuts_dev-clean.jsonl.gz"

    def segment(rows):
        rows[1]["start"], rows[1]["duration"] = 1.0, 2.0
        rows[1]["supervisions"][0].update(start=0.0, duration=2.0)

    bad = _rewrite(cuts, tmp_path / "seg_cuts.jsonl.gz", segment)
    with pytest.raises(ManifestError, match=r"seg_cuts.jsonl.gz: cut '.*' is a segment \(1.00-3.00 s\)"):
        read_manifest(bad)

    def two(rows):
        rows[0]["supervisions"].append({**rows[0]["supervisions"][0], "id": "other"})

    with pytest.raises(ManifestError, match="2 transcribed supervisions"):
        read_manifest(_rewrite(cuts, tmp_path / "two_cuts.jsonl.gz", two))
    with pytest.raises(ManifestError, match="RecordingSet holds no transcripts"):
        read_manifest(prepared / "librispeech_recordings_dev-clean.jsonl.gz")
    lonely = tmp_path / "librispeech_supervisions_dev-clean.jsonl.gz"
    shutil.copy(prepared / lonely.name, lonely)
    with pytest.raises(ManifestError, match="needs its RecordingSet beside it"):
        read_manifest(lonely)
    with pytest.raises(ManifestError):
        read_lhotse(tmp_path / "two_cuts.jsonl.gz")


def test_a_run_trains_on_lhotse_manifests(prepared: Path, tmp_path: Path, monkeypatch) -> None:
    from harness.run.trainer import run_training

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    train = prepared / "librispeech_cuts_dev-clean.jsonl.gz"
    test = prepared / "librispeech_supervisions_test-clean.jsonl.gz"
    cfg = tiny_config(f"data.train={train}", f"data.dev={train}", f"data.test={{ls: {test}}}", "train.max_steps=2",
                      "train.eval_every=2", "train.eval_utterances=2", "train.warmup_steps=1", "decode.max_new_tokens=3",
                      "data.max_train_utterances=4")
    result = run_training(cfg, tmp_path / "run", progress=False)
    assert result.metrics["test/ls/ref_words"] > 0 and "test/ls/wer" in result.metrics
    rows = (tmp_path / "run" / "transcripts" / "ls.jsonl").read_text().splitlines()
    assert len(rows) == 9
