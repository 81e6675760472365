"""Study files with replicate seeds and declared findings: expansion, and one file:line error per mistake."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.config import ConfigError
from harness.experiments.study import REPLICATE_KEY, load_study
from tests.experiments.test_study import write

HEAD = """\
name: f
base:
  encoder: {name: "tiny:whisper"}
  llm: {name: "tiny:llama"}
  adapter: {hidden: 64}
axes:
  adapter.k: [2, 5]
  encoder.trainable: [false, true]
"""


def test_seeds_replicate_every_cell_including_includes(tmp_path: Path) -> None:
    st = load_study(write(tmp_path, HEAD + "include:\n  - {adapter.projector: qformer}\nseeds: [0, 1, 2]\n"))
    assert st.seeds == (0, 1, 2)
    assert len(st.cells) == (4 + 1) * 3
    assert [c.values[REPLICATE_KEY] for c in st.cells[:3]] == [0, 1, 2]
    assert [c.config.train.seed for c in st.cells] == [0, 1, 2] * 5
    assert st.cells[-1].config.adapter.projector == "qformer" and st.cells[-1].name.endswith("qformer|seed=2")
    assert st.factor_keys == ("adapter.k", "encoder.trainable", "adapter.projector")
    assert len({c.hash for c in st.cells}) == 15  # a seed is part of what a run learns: its own identity


def test_findings_are_typed_against_the_axes(tmp_path: Path) -> None:
    st = load_study(write(tmp_path, HEAD + """\
seeds: [0, 1]
findings:
  - claim: frozen beats trainable
    compare: {encoder.trainable: [false, true]}
    metric: test/wer
    expect: lower
    where: {adapter.k: 5}
    paper: "Table 7: frozen 2.28 vs trainable ..."
  - claim: emergence exists
    metric: emerged
    expect: higher
    than: 0.5
"""))
    a, b = st.findings
    assert (a.key, a.arms, a.metric, a.expect, dict(a.where), a.paper) == (
        "encoder.trainable", (False, True), "test/wer", "lower", {"adapter.k": 5}, "Table 7: frozen 2.28 vs trainable ...")
    assert math.isnan(a.than) and not a.one_arm
    assert b.one_arm and b.than == 0.5 and b.arms == ()


@pytest.mark.parametrize(("tail", "line", "needle"), [
    ("seeds: [0, 0]\n", 9, "repeats a seed"),
    ("seeds: [0, -1]\n", 9, "non-negative integer"),
    ("seeds: 3\n", 9, "non-empty list"),
    ("seeds: [0]\ninclude:\n  - {train.seed: 4}\n", 9, "in one place"),
    ("findings:\n  - claim: x\n    compare: {adapter.kk: [2, 5]}\n    metric: test/wer\n    expect: lower\n", 11,
     "did you mean 'adapter.k'"),
    ("findings:\n  - claim: x\n    compare: {adapter.k: [2, 7]}\n    metric: test/wer\n    expect: lower\n", 11,
     "7 is not a value of axis adapter.k"),
    ("findings:\n  - claim: x\n    compare: {adapter.k: [2]}\n    metric: test/wer\n    expect: lower\n", 11,
     "two values"),
    ("findings:\n  - claim: x\n    compare: {adapter.k: [2, 5]}\n    metric: test/wer\n    expect: better\n", 13,
     "'lower' or 'higher'"),
    ("findings:\n  - claim: x\n    metric: test/wer\n    expect: lower\n", 10, "got neither"),
    ("findings:\n  - claim: x\n    metric: emerged\n    expect: lower\n    than: .nan\n", 13, "finite number"),
    ("findings:\n  - claim: x\n    metric: emerged\n    expect: lower\n    than: 1\n    claimm: y\n", 14,
     "did you mean 'claim'"),
    ("findings:\n  - compare: {adapter.k: [2, 5]}\n    metric: test/wer\n    expect: lower\n", 10, "claim"),
    ("findings:\n  - claim: x\n    compare: {adapter.k: [2, 5]}\n    metric: test/wer\n    expect: lower\n"
     "    where: {adapter.k: 2}\n", 14, "the one compared"),
    ("findings: {claim: x}\n", 9, "list of mappings"),
])
def test_findings_and_seeds_errors_name_file_and_line(tmp_path: Path, tail: str, line: int, needle: str) -> None:
    path = write(tmp_path, HEAD + tail)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}:") and needle in msg and "\n" not in msg, msg
