"""A run's identity is what defines the experiment: execution settings never split a cell, every
experiment setting does, manifests count by content, and cells of older stores are adopted.

Config-level tests walk every leaf of the config tree; the study-level ones run real cells (tiny
models on real LibriSpeech audio) against a real SQLite MLflow store.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.config import (
    ConfigError,
    FrozenDict,
    RunConfig,
    build_config,
    config_hash,
    execution_dict,
    is_execution,
    legacy_hashes,
    load_config,
    to_dict,
)
from harness.experiments.grid import run_study
from harness.tracking.store import make_client
from harness.tracking.tags import CELL_HASH as TAG_HASH
from harness.experiments.study import load_study
from tests.config.test_config import _changed, _get, _leaves, _set
from tests.experiments.test_reliability import (
    _manifests,
    assert_no_duplicates,
    base_config,
    failing_at_step_three,
    steps_of,
    write_study,
)

EXECUTION_KEYS = {
    "train.device", "train.compile", "train.gradient_checkpointing", "train.full_vocab_logits", "train.parallel",
    "train.log_every", "train.checkpoint_every", "encoder.cache", "data.scan", "decode.batch_size",
}


def _execution_leaves() -> set[str]:
    out = set()

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            sub = getattr(cls(), f.name)
            if dataclasses.is_dataclass(sub):
                walk(type(sub), f"{prefix}{f.name}.")
            elif is_execution(f):
                out.add(f"{prefix}{f.name}")

    walk(RunConfig, "")
    return out


def test_the_execution_settings_are_the_ten_that_do_not_change_what_is_learned() -> None:
    assert _execution_leaves() == EXECUTION_KEYS
    assert set(execution_dict(RunConfig())) == EXECUTION_KEYS


def _needs_ctc(key: str) -> bool:
    return (key.startswith("adapter.ctc.") and key != "adapter.ctc.weight") or key.startswith("decode.ctc_")


def _variant(key: str, tp: Any) -> RunConfig:
    data = to_dict(RunConfig())
    if _needs_ctc(key):
        _set(data, "adapter.ctc.weight", 0.5)  # the other CTC settings are valid only with the loss on
    _set(data, key, _changed(_get(data, key), tp))
    return build_config(data)


@pytest.mark.parametrize("key,tp", _leaves(), ids=[k for k, _ in _leaves()])
def test_each_setting_is_in_the_identity_exactly_when_it_defines_the_experiment(key: str, tp: Any) -> None:
    cfg = _variant(key, tp)
    assert cfg != RunConfig()
    same = config_hash(cfg) == config_hash(RunConfig())
    if key in EXECUTION_KEYS or key == "data.optional_test":
        assert same, f"{key} is how a run executes (or evaluation only): it must not make a new cell"
    elif _needs_ctc(key):
        base = _variant("adapter.ctc.weight", float)  # compare with the loss on, the only valid setting
        assert config_hash(cfg) != config_hash(base) or cfg == base, key
    else:
        assert not same, f"{key} changes what is learned: it must make a new cell"
    # The legacy identity hashed everything; it still tells them all apart (older stores hold those hashes).
    assert legacy_hashes(cfg)[1] != legacy_hashes(RunConfig())[1]


def test_manifests_count_by_content_not_by_path(tmp_path: Path) -> None:
    a = tmp_path / "a" / "train.jsonl"
    a.parent.mkdir()
    a.write_text('{"id": "u1", "audio": "x.wav", "text": "HELLO", "duration": 1.0}\n')
    cfg = lambda train: load_config(None, [f"data.train={train}"])  # noqa: E731
    first = config_hash(cfg(a))
    moved = tmp_path / "elsewhere.jsonl"
    shutil.copy(a, moved)
    assert config_hash(cfg(moved)) == first  # a moved manifest is the same cell
    a.write_text(a.read_text() + '{"id": "u2", "audio": "y.wav", "text": "WORLD", "duration": 1.0}\n')
    assert config_hash(cfg(a)) != first  # a changed one is a new cell (the digest cache sees the new file)
    missing = [config_hash(cfg(tmp_path / n)) for n in ("nope1.jsonl", "nope2.jsonl")]
    assert missing[0] != missing[1]  # two manifests not made yet are still two cells


def test_the_version_1_identity_is_the_one_older_stores_were_written_with() -> None:
    # Known answers, computed with the identity before version 2 (the whole config, manifests by path).
    assert legacy_hashes(RunConfig())[1] == "0b67647f84dbbe3bac59fbe2a45216f7c170f01033d2b1dd0c582b85eab8a81e"
    cfg = load_config(None, ["adapter.ctc.weight=1.0", "train.compile=true", "decode.batch_size=4", "data.test={a: x.jsonl}"])
    assert legacy_hashes(cfg)[1] == "1db6152186368b4266d755a49e3f8d3114770b063cfa50c9e814e7ebdc868943"
    # The options that moved into their family's section hash as they did before.
    qformer = ["adapter.projector=qformer", "adapter.qformer.queries=2", "adapter.qformer.layers=3"]
    assert legacy_hashes(load_config(None, qformer))[1] == "0165b53b6e3147b6b7ff2c69d29d46bb2fcf18a504bad8a2c15b6b67c579e73e"
    pad30 = load_config(None, ["encoder.whisper.input_mode=pad30"])
    assert legacy_hashes(pad30)[1] == "0aa28123f2284bd33cf01b72f6f52698407472be083e97f3551550954c0d287e"


@pytest.mark.parametrize("overrides,known", [
    ((), "4a441f397e226c06bbd4e0bfbb01826935238d0cf4bb062995ef065af8f53a4f"),
    (("adapter.projector=qformer", "adapter.qformer.queries=2", "adapter.qformer.layers=3"),
     "1a0c648665d3666f03c12a4cf295302a4d43ece165cac402e119365d02350720"),
    (("encoder.whisper.input_mode=pad30",), "651c729d76dfc2596c11bcff82df087c9877a1e0b31735a5eaa193940f07c297"),
])
def test_the_version_2_identity_is_the_one_older_stores_were_written_with(tmp_path: Path, overrides, known) -> None:
    # Known answers, computed with the version-2 code (options then at encoder.input_mode and
    # adapter.qformer_queries / qformer_layers), manifests by the digest of these bytes.
    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "u1", "audio": "x.wav", "text": "HELLO", "duration": 1.0}\n')
    cfg = load_config(None, [f"data.train={m}", f"data.dev={m}", f"data.test={{a: {m}}}", *overrides])
    assert legacy_hashes(cfg)[2] == known
    assert config_hash(cfg) not in legacy_hashes(cfg).values()  # version 3 names it anew


@pytest.mark.parametrize("old,new,value", [("encoder.input_mode", "encoder.whisper.input_mode", "pad30"),
                                           ("adapter.qformer_queries", "adapter.qformer.queries", 3),
                                           ("adapter.qformer_layers", "adapter.qformer.layers", 4)])
def test_a_moved_key_is_read_at_its_new_place_in_files_and_refused_as_an_axis(
        old: str, new: str, value: Any, tmp_path: Path, caplog) -> None:
    section, leaf = old.split(".")
    run_folder_config = tmp_path / "config.yaml"  # as a run folder of an older version holds it; line 2 holds the leaf
    run_folder_config.write_text(yaml.safe_dump({section: {leaf: value}}))
    caplog.set_level(logging.WARNING, logger="harness.config")
    cfg = load_config(run_folder_config)
    assert cfg == load_config(None, [f"{new}={value}"]) != RunConfig()
    assert f"config.yaml:2: {old} is the old spelling of {new}" in caplog.text
    assert load_config(None, [f"{old}={value}"]) == cfg  # an override too
    with pytest.raises(ConfigError, match=rf"the old spelling of {re.escape(new)}, which is also given"):
        load_config(None, [f"{old}={value}", f"{new}={value}"])
    study = write_study(tmp_path, "moved", {}, axes={old: [value]})
    with pytest.raises(ConfigError, match=rf"moved.yaml:\d+: {re.escape(old)}: this key moved to '{re.escape(new)}'"):
        load_study(study)


def test_the_config_tree_is_immutable_and_hashable() -> None:
    cfg = load_config(None, ["data.test={a: a.jsonl}"])
    assert isinstance(cfg.data.test, FrozenDict)
    with pytest.raises(TypeError):
        cfg.data.test["b"] = "b.jsonl"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.data.test.update(b="b.jsonl")
    assert hash(cfg) == hash(load_config(None, ["data.test={a: a.jsonl}"]))
    assert len({cfg, load_config(None, ["data.test={a: a.jsonl}"]), RunConfig()}) == 2
    assert json.loads(json.dumps(to_dict(cfg)))["data"]["test"] == {"a": "a.jsonl"}


def test_two_cells_that_differ_only_in_execution_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": {"encoder": {"name": "tiny:whisper"}, "llm": {"name": "tiny:llama"}},
                                    "axes": {"train.compile": [False, True]}}))
    with pytest.raises(ConfigError, match=r"s\.yaml:\d+: two cells of the study differ only in execution settings \(train\.compile\)"):
        load_study(path)


# ------------------------------------------------------------------ study level, real runs

EXECUTION_CHANGES = {  # every execution setting, changed to a value this machine can run
    "train.device": "auto", "train.compile": True, "train.gradient_checkpointing": True,
    "train.full_vocab_logits": True, "train.parallel": "fsdp", "train.log_every": 2, "train.checkpoint_every": 3,
    "encoder.cache": False, "data.scan": "decode", "decode.batch_size": 3,
}


def _with(base: dict, key: str, value: Any) -> dict:
    data = json.loads(json.dumps(base))
    section, leaf = key.rsplit(".", 1)
    node = data
    for p in section.split("."):
        node = node.setdefault(p, {})
    node[leaf] = value
    return data


@pytest.fixture(scope="module")
def finished(tmp_path_factory, libri) -> dict[str, Any]:
    """One cell trained to the end in a real SQLite store."""
    tmp = tmp_path_factory.mktemp("identity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp / "cache"))
        d = _manifests(tmp, libri)
        base = base_config(d, max_steps=2, checkpoint_every=1)
        path = write_study(tmp, "ident", base)
        uri = f"sqlite:///{tmp}/mlflow.db"
        (out,) = run_study(load_study(path), uri=uri, runs_root=tmp / "runs", progress=False)
        assert out.status == "done"
        yield {"tmp": tmp, "base": base, "uri": uri, "run_id": out.run_id, "hash": out.cell.hash}


def test_changing_any_execution_setting_skips_the_finished_cell(finished) -> None:
    tmp = finished["tmp"]
    assert set(EXECUTION_CHANGES) == EXECUTION_KEYS
    for key, value in EXECUTION_CHANGES.items():
        path = write_study(tmp, "ident", _with(finished["base"], key, value))
        (out,) = run_study(load_study(path), uri=finished["uri"], runs_root=tmp / "runs", progress=False)
        assert (out.status, out.run_id, out.cell.hash) == ("skipped-done", finished["run_id"], finished["hash"]), key


def test_changing_an_experiment_setting_makes_a_new_cell(finished, monkeypatch) -> None:
    tmp = finished["tmp"]
    monkeypatch.setenv("HARNESS_CACHE", str(tmp / "cache"))
    path = write_study(tmp, "ident", _with(finished["base"], "train.lr", 3e-4))
    (out,) = run_study(load_study(path), uri=finished["uri"], runs_root=tmp / "runs", progress=False)
    assert out.status == "done" and out.run_id != finished["run_id"] and out.cell.hash != finished["hash"]


def test_a_failed_cell_resumes_with_other_execution_settings(tmp_path: Path, libri, monkeypatch, caplog) -> None:
    """The user fixes the dev file and retries with another checkpoint cadence, decode batch, scan and
    cache: the same run continues from its checkpoint and no step is logged twice."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    base, real = failing_at_step_three(tmp_path, libri)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    [first] = run_study(load_study(write_study(tmp_path, "resume", base)), uri=uri, runs_root=tmp_path / "runs",
                        progress=False)
    assert first.status == "failed"
    (tmp_path / "dev.flac").write_bytes(real)
    caplog.set_level(logging.INFO, logger="harness")
    changed = base
    for key, value in {"train.checkpoint_every": 1, "decode.batch_size": 5, "data.scan": "decode", "encoder.cache": True}.items():
        changed = _with(changed, key, value)
    [again] = run_study(load_study(write_study(tmp_path, "resume", changed)), uri=uri, runs_root=tmp_path / "runs",
                        progress=False, retry_failed=True)
    assert (again.status, again.run_id, again.cell.hash) == ("done", first.run_id, first.cell.hash)
    assert re.search(r"resumed from \S+ at step 2", caplog.text), caplog.text
    client = make_client(uri)
    assert steps_of(client, first.run_id) == [1, 2, 3, 4, 5]
    assert_no_duplicates(client, first.run_id)
    assert client.get_run(first.run_id).data.tags["exec.decode.batch_size"] == "5"  # this attempt's, as a tag


def _as_an_older_version_left_it(client, out, runs_root: Path, version: int) -> str:
    """Tag the cell's run with the identity of an older version and name its folder (and hash file) by it."""
    legacy = out.cell.legacy_hashes[version]
    client.set_tag(out.run_id, TAG_HASH, legacy)
    old = runs_root / legacy[:12]
    (runs_root / out.cell.hash[:12]).rename(old)
    (old / "config_hash").write_text(legacy + "\n")
    return legacy


@pytest.mark.parametrize("version", [1, 2])
def test_a_finished_cell_of_an_older_store_is_found_and_skipped(tmp_path: Path, libri, monkeypatch, version: int) -> None:
    from analysis.data import load_runs

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    d = _manifests(tmp_path, libri)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_study(tmp_path, "old", base_config(d, max_steps=2, checkpoint_every=1))
    [done] = run_study(load_study(path), uri=uri, runs_root=tmp_path / "runs", progress=False)
    client = make_client(uri)
    legacy = _as_an_older_version_left_it(client, done, tmp_path / "runs" / "old", version)
    runs = load_runs(path, tracking_uri=uri)  # analysis reads the old store as it is
    assert list(runs["run_id"]) == [done.run_id] and list(runs["cell_hash"]) == [done.cell.hash]
    [again] = run_study(load_study(path), uri=uri, runs_root=tmp_path / "runs", progress=False)
    assert (again.status, again.run_id) == ("skipped-done", done.run_id)
    tags = client.get_run(done.run_id).data.tags
    assert (tags[TAG_HASH], tags[f"harness.cell_hash_v{version}"]) == (done.cell.hash, legacy)


def test_an_unfinished_cell_of_an_older_store_resumes_from_its_folder(tmp_path: Path, libri, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="harness")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    base, real = failing_at_step_three(tmp_path, libri)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_study(tmp_path, "old", base)
    [first] = run_study(load_study(path), uri=uri, runs_root=tmp_path / "runs", progress=False)
    assert first.status == "failed"
    client = make_client(uri)
    legacy = _as_an_older_version_left_it(client, first, tmp_path / "runs" / "old", 2)
    (tmp_path / "dev.flac").write_bytes(real)
    caplog.clear()
    [again] = run_study(load_study(path), uri=uri, runs_root=tmp_path / "runs", progress=False, retry_failed=True)
    assert (again.status, again.run_id) == ("done", first.run_id)
    assert re.search(r"resumed from \S+ at step 2", caplog.text), caplog.text
    assert steps_of(client, first.run_id) == [1, 2, 3, 4, 5]  # resumed at the step-2 checkpoint of the old folder
    assert_no_duplicates(client, first.run_id)
    assert (tmp_path / "runs" / "old" / first.cell.hash[:12] / "checkpoint").is_dir()
    assert not (tmp_path / "runs" / "old" / legacy[:12]).exists()
