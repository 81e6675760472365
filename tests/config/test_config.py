"""Typed run config: defaults, ``a.b=v`` overrides, errors that name the key (and file:line), hash."""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Literal

import pytest

from harness.config import (
    ConfigError,
    FrozenDict,
    RunConfig,
    build_config,
    canonical_json,
    config_hash,
    flatten,
    load_config,
    parse_override,
    to_dict,
    to_yaml,
)


def _leaves(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf field of the config as (dotted key, annotation)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_leaves(tp, key))
        else:
            out.append((key, tp))
    return out


def _get(d: dict, key: str) -> Any:
    for p in key.split("."):
        d = d[p]
    return d


def _set(d: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def _changed(value: Any, tp: Any) -> Any:
    """A valid value different from ``value`` for a field of annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return next(a for a in args if a != value)
    if value is None:  # Optional field at its None default
        inner = next(a for a in args if a is not type(None))
        return {int: 3, float: 2.5, str: "custom"}[inner]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.25 if value < 1 else value * 2
    if isinstance(value, str):
        return value + "-b"
    if isinstance(value, list):
        return value + ["o_proj"]
    if isinstance(value, dict):
        return {**value, "extra": "extra.jsonl"}
    raise AssertionError(f"no change rule for {value!r}")


# ------------------------------------------------------------------------------- defaults


def test_defaults_are_valid_and_the_papers() -> None:
    cfg = load_config(None)
    assert cfg == RunConfig() == build_config({}) == build_config(None)
    assert (cfg.adapter.k, cfg.adapter.projector, cfg.adapter.tail, cfg.adapter.hidden) == (5, "linear", "drop", 2048)
    assert cfg.encoder.trainable is False and cfg.llm.lora.enabled is False
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.schedule) == (1e-3, 0.0, "constant")
    # The canonical form of the defaults validates again to the same config.
    assert build_config(to_dict(cfg)) == cfg


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_config(None).train.lr = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("train.lr=1e-4", "train.lr", 1e-4),
        ("train.lr=3E-5", "train.lr", 3e-5),
        ("train.lr=2", "train.lr", 2.0),
        ("adapter.k=10", "adapter.k", 10),
        ("encoder.trainable=true", "encoder.trainable", True),
        ("encoder.trainable=False", "encoder.trainable", False),
        ("data.scan=off", "data.scan", "off"),  # YAML 1.2: a string, not the boolean YAML 1.1 makes of it
        ("train.clip=null", "train.clip", None),
        ("llm.system_prompt=", "llm.system_prompt", ""),
        ("llm.prompt=Write down what you hear.", "llm.prompt", "Write down what you hear."),
        ("llm.lora.target_modules=[q_proj, k_proj, v_proj]", "llm.lora.target_modules", ("q_proj", "k_proj", "v_proj")),
        ("data.test={a: a.jsonl, b: b.jsonl}", "data.test", FrozenDict({"a": "a.jsonl", "b": "b.jsonl"})),
        ("encoder.name=tiny:wavlm", "encoder.name", "tiny:wavlm"),
    ],
)
def test_override_values_are_parsed_and_typed(text: str, key: str, value: Any) -> None:
    cfg = load_config(None, [text])
    got = _get(dataclasses.asdict(cfg), key)
    assert got == value
    assert type(got) is type(value)  # 1e-4 is a float (not the string YAML 1.1 makes of it), 2 -> 2.0


def test_later_override_wins_and_untouched_keys_keep_defaults() -> None:
    cfg = load_config(None, ["train.lr=0.1", "adapter.k=3", "train.lr=0.2"])
    assert cfg.train.lr == 0.2 and cfg.adapter.k == 3
    assert cfg.train.max_steps == RunConfig().train.max_steps


def test_parse_override() -> None:
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_override(" adapter.k =7") == ("adapter.k", 7)
    assert parse_override("llm.prompt=a=b") == ("llm.prompt", "a=b")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("llm.lora.target_modules=[q_proj")


# ------------------------------------------------------------------------------- errors


def test_unknown_key_suggests_and_lists() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lrr=1e-4"])
    msg = str(e.value)
    assert "unknown key 'train.lrr'" in msg and "did you mean 'lr'?" in msg
    assert "Valid keys of train:" in msg and "warmup_steps" in msg
    with pytest.raises(ConfigError, match=r"unknown key 'trian' \(did you mean 'train'\?\)"):
        load_config(None, ["trian.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"unknown key 'llm.lora.rnak' \(did you mean 'rank'\?\)"):
        load_config(None, ["llm.lora.rnak=4"])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("adapter.k=five", r"adapter.k: expected int, got 'five'"),
        ("adapter.k=2.5", r"adapter.k: expected int, got 2.5"),
        ("adapter.k=true", r"adapter.k: expected int, got True"),
        ("encoder.trainable=1", r"encoder.trainable: expected bool, got 1"),
        ("encoder.trainable=yes", r"encoder.trainable: expected bool, got 'yes'"),
        ("train.lr=fast", r"train.lr: expected float, got 'fast'"),
        ("encoder.whisper.input_mode=pad20", r"encoder.whisper.input_mode: expected one of 'native', 'pad30', got 'pad20'"),
        ("llm.lora.target_modules=q_proj", r"llm.lora.target_modules: expected a list of str"),
        ("llm.lora.target_modules=[q_proj, 3]", r"llm.lora.target_modules\[1\]: expected str, got 3"),
        ("data.max_train_utterances=all", r"data.max_train_utterances: expected int or null"),
        ("train=3", r"train: expected a mapping"),
    ],
)
def test_wrong_type(text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [text])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("adapter.k=0", r"adapter.k: expected >= 1, got 0"),
        ("adapter.k=-5", r"adapter.k: expected >= 1, got -5"),
        ("train.lr=-1e-4", r"train.lr: expected > 0, got -0.0001"),
        ("train.lr=0", r"train.lr: expected > 0, got 0.0"),
        ("llm.lora.dropout=1", r"llm.lora.dropout: expected in \[0, 1\), got 1.0"),
        ("decode.beam=0", r"decode.beam: expected >= 1, got 0"),
        ("train.clip=0", r"train.clip: expected > 0 or null, got 0.0"),
        ("encoder.name=whisper-tiny", r"encoder.name: expected a model reference"),
        ("llm.name='tiny:'", r"llm.name: expected a model reference"),
    ],
)
def test_out_of_range(text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [text])


YAML = """\
# a run
encoder:
  name: tiny:whisper
adapter:
  k: 4
train:
  lr: 1e-4
  max_steps: 20
"""


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_is_read(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, YAML))
    assert (cfg.encoder.name, cfg.adapter.k, cfg.train.lr, cfg.train.max_steps) == ("tiny:whisper", 4, 1e-4, 20)
    # Overrides apply on top of the file.
    assert load_config(_write(tmp_path, YAML), ["adapter.k=6"]).adapter.k == 6


@pytest.mark.parametrize(
    ("line", "bad", "pattern"),
    [
        (8, "  max_stpes: 20", r"unknown key 'train.max_stpes' \(did you mean 'max_steps'\?\)"),
        (5, "  k: 0", r"adapter.k: expected >= 1, got 0"),
        (5, "  k: four", r"adapter.k: expected int, got 'four'"),
        (7, "  lr: -0.5", r"train.lr: expected > 0"),
    ],
)
def test_yaml_errors_name_file_and_line(tmp_path: Path, line: int, bad: str, pattern: str) -> None:
    lines = YAML.splitlines()
    lines[line - 1] = bad
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:{line}: ")


def test_yaml_syntax_error_and_missing_file_name_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "train:\n  lr: [1e-4\n")
    with pytest.raises(ConfigError, match="invalid YAML") as e:
        load_config(path)
    assert str(path) in str(e.value)
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read") as e:
        load_config(missing)
    assert str(missing) in str(e.value)
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(_write(tmp_path, "- train\n- lr\n", "list.yaml"))


def test_yaml_merge_keys_may_repeat_keys(tmp_path: Path) -> None:
    """``<<`` merges are meant to repeat keys (the mapping's own key wins): not a duplicate-key error."""
    path = _write(tmp_path, "adapter: {k: 3, hidden: 8}\nllm: {name: 'tiny:llama'}\n"
                            "decode:\n  <<: {beam: 2, batch_size: 4}\n  beam: 3\n")
    cfg = load_config(path)
    assert (cfg.adapter.k, cfg.decode.beam, cfg.decode.batch_size) == (3, 3, 4)


def test_empty_yaml_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "# nothing\n")) == RunConfig()


def test_override_errors_are_not_blamed_on_the_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, YAML)
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.lr=-1"])
    assert str(e.value).startswith("override 'train.lr=-1': train.lr: expected > 0")
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.lrr=1"])
    assert str(e.value).startswith("override 'train.lrr=1': unknown key 'train.lrr'")
    # Errors in values the file wrote still name the file.
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, YAML.replace("k: 4", "k: 0"), "bad.yaml"), ["train.lr=0.1"])
    assert str(e.value).startswith(f"{tmp_path / 'bad.yaml'}:5: adapter.k")


# ------------------------------------------------------------------------------- identity


def test_hash_ignores_key_order_in_yaml(tmp_path: Path) -> None:
    a = _write(tmp_path, "train:\n  lr: 0.01\n  max_steps: 5\nadapter:\n  k: 3\n  tail: pad\n", "a.yaml")
    b = _write(tmp_path, "adapter:\n  tail: pad\n  k: 3\ntrain:\n  max_steps: 5\n  lr: 1e-2\n", "b.yaml")
    ca, cb = load_config(a), load_config(b)
    assert ca == cb
    assert config_hash(ca) == config_hash(cb)
    assert canonical_json(ca) == canonical_json(cb)
    assert len(config_hash(ca)) == 64
    # The same config from overrides hashes the same too.
    assert config_hash(load_config(None, ["adapter.tail=pad", "adapter.k=3", "train.max_steps=5", "train.lr=0.01"])) == config_hash(ca)


def test_yaml_round_trip_keeps_the_hash(tmp_path: Path) -> None:
    cfg = load_config(None, ["adapter.k=7", "llm.lora.enabled=true", "data.test={x: x.jsonl}", "train.clip=null"])
    again = load_config(_write(tmp_path, to_yaml(cfg)))
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_flatten() -> None:
    cfg = load_config(None, ["train.lr=1e-4", "data.test={a: a.jsonl}"])
    flat = flatten(cfg)
    assert flat["train.lr"] == 1e-4
    assert flat["adapter.k"] == 5
    assert flat["llm.lora.rank"] == 8  # nested sections are flattened all the way
    assert flat["llm.system_prompt"] is None
    assert json.loads(flat["llm.lora.target_modules"]) == ["q_proj", "v_proj"]
    assert json.loads(flat["data.test"]) == {"a": "a.jsonl"}  # split tables stay one parameter
    assert json.loads(flat["data.optional_test"]) == {}
    # One entry per leaf field, and only scalars (what a tracker accepts as parameters).
    assert sorted(flat) == sorted(key for key, _ in _leaves())
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in flat.values())
