"""Typed, frozen run configuration: YAML + ``a.b=v`` overrides -> :class:`RunConfig`.

Every field has a docstring-style comment; validation raises :class:`ConfigError` naming the key
(and the file and line when the value came from a YAML file) and never repairs a value. The
configuration that is logged is exactly the resolved one, and its canonical JSON hashes to the
run's identity (:func:`config_hash`).

Example::

    >>> cfg = load_config(None, ["adapter.k=10", "train.lr=1e-4"])
    >>> cfg.adapter.k, cfg.train.lr
    (10, 0.0001)
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------------------------
# The sections of a run


@dataclass(frozen=True)
class DataConfig:
    train: str = "data/synth/train.jsonl"
    """JSONL manifest of training utterances (``id``, ``audio``, ``text``, ``duration``)."""
    dev: str = "data/synth/dev.jsonl"
    """JSONL manifest used for evaluation during training (loss, accuracy, WER on a subset)."""
    test: dict[str, str] = field(
        default_factory=lambda: {"synth-test": "data/synth/test.jsonl", "synth-test-unseen": "data/synth/test_unseen.jsonl"}
    )
    """Test splits, name -> manifest; each gets a WER at the end of the run."""
    optional_test: dict[str, str] = field(default_factory=dict)
    """Test splits that are decoded only when their manifest exists (e.g. real LibriSpeech)."""
    max_train_utterances: int | None = None
    """Use only the first N training utterances (``None``: all)."""
    max_duration: float = 30.0
    """Utterances longer than this many seconds are skipped with a counted warning (Whisper's window is 30 s)."""
    scan: Literal["header", "decode", "off"] = "header"
    """Check every audio file before training: read headers (fast), decode fully (catches truncated/NaN
    audio), or not at all."""
    on_bad_audio: Literal["skip", "stop"] = "skip"
    """A file the scan finds bad: skip its utterance (counted, listed in bad_audio.jsonl) or stop the run."""


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "pack:whisper-tiny.en"
    """Model reference: ``hf:<id or folder>``, ``pack:<name>`` or ``tiny:<name>``."""
    input_mode: Literal["native", "pad30"] = "native"
    """Whisper only: ``pad30`` pads log-mel to 30 s as the paper; ``native`` keeps the utterance's length."""
    trainable: bool = False
    """Train the encoder with the projector (the paper freezes it)."""
    cache: bool = True
    """Frozen encoder only: compute its frames once per audio file and reuse them from disk (fp16)."""


@dataclass(frozen=True)
class CTCConfig:
    """Auxiliary CTC supervision of the projector (a departure from the paper; off by default).
    See :mod:`harness.models.ctc`."""

    weight: float = 0.0
    """Weight of the CTC loss on the projector's outputs read as the LLM's tokens (logits = output x
    the LLM's embedding matrix, plus a learned blank); 0: off, the paper's recipe."""
    compress: bool = False
    """Feed the LLM one vector per CTC token: drop frames whose best class is the blank and merge runs
    of the same token (needs ``weight`` > 0)."""
    readout: Literal["projector", "posterior"] = "projector"
    """With ``compress``: a merged run gives the LLM its mean projector vector (rescaled to the token
    embeddings' RMS), or its mean posterior over tokens times the embedding matrix."""
    lm_after: int = 0
    """Optimizer steps that train the CTC loss alone before the LM loss joins (the LLM does not run in
    them, so they cost a fraction of a step); 0: both from the start."""


@dataclass(frozen=True)
class AdapterConfig:
    projector: str = "linear"
    """Projector name in the registry: ``linear``, ``conv1d`` or ``qformer``."""
    k: int = 5
    """Downsample rate: concatenate (or window) every k encoder frames."""
    tail: Literal["drop", "pad"] = "drop"
    """Frames left over after the last full group of k: dropped (the paper) or zero-padded."""
    hidden: int = 2048
    """Hidden size of the projector MLP."""
    qformer_queries: int = 1
    """Q-Former: learned queries per window of k frames (output tokens per window)."""
    qformer_layers: int = 2
    """Q-Former: number of transformer layers."""
    output_norm: bool = False
    """RMS-normalise the projector's output to the LLM's token-embedding scale."""
    ctc: CTCConfig = field(default_factory=CTCConfig)
    """Optional auxiliary CTC loss and CTC compression (a departure from the paper)."""


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    """Add LoRA adapters to the LLM (a departure from the paper's frozen LLM)."""
    rank: int = 8
    """LoRA rank r."""
    alpha: float = 16.0
    """LoRA scaling alpha."""
    dropout: float = 0.05
    """Dropout on the LoRA branch."""
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Names of the LLM's linear modules that receive LoRA."""


@dataclass(frozen=True)
class LLMConfig:
    name: str = "pack:smollm2-135m-instruct"
    """Model reference: ``hf:<id or folder>``, ``pack:<name>`` or ``tiny:<name>``."""
    prompt_style: Literal["plain", "chat"] = "chat"
    """``plain``: the paper's ``USER: <speech> <prompt> ASSISTANT:``; ``chat``: the tokenizer's chat template."""
    prompt: str = "Transcribe speech to text."
    """Instruction placed after the speech embeddings."""
    system_prompt: str | None = None
    """Chat style only: ``None`` keeps the template's default system turn; a string replaces it ('' removes it)."""
    casing: Literal["lower", "upper", "as_is"] = "lower"
    """Casing of the transcript the LLM is trained to write (WER is computed after normalisation either way)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Optional LoRA on the LLM."""


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    """Seed for initialisation, data order and dropout."""
    max_steps: int = 300
    """Optimizer steps to train."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay (the paper uses none)."""
    warmup_steps: int = 100
    """Linear warm-up steps from 0 to the peak learning rate."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """After warm-up: constant (the paper), linear or cosine decay to 0 at ``max_steps``."""
    batch_size: int = 4
    """Utterances per batch (ignored when ``batch_seconds`` is set)."""
    batch_seconds: float | None = None
    """Form batches by total audio seconds (with length bucketing) instead of by count."""
    grad_accum: int = 1
    """Batches per optimizer step."""
    clip: float | None = 1.0
    """Gradient-norm clipping (``None``: off)."""
    log_every: int = 1
    """Log training metrics every N optimizer steps."""
    eval_every: int = 100
    """Evaluate on dev every N optimizer steps (0: only at the end)."""
    eval_utterances: int = 64
    """Dev utterances used for each evaluation (loss, accuracy; WER by greedy decoding)."""
    early_stop_patience: int | None = None
    """Stop after this many evaluations without a better dev loss (``None``: never)."""
    checkpoint_every: int = 50
    """Write a resumable checkpoint every N optimizer steps."""
    order: Literal["shuffle", "short_first"] = "shuffle"
    """Data order: every epoch shuffled, or ``short_first``: the first epoch runs from the shortest
    utterances to the longest (a length curriculum), later epochs are shuffled."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu`` or ``cuda[:i]``."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 autocast on CUDA, fp32 on CPU (bf16 matmul on CPUs without AMX is ~100x slower);
    ``bf16``: autocast to bf16 on any device; ``fp32``: no autocast."""
    compile: bool = False
    """``torch.compile`` the LLM's decoder and the projector (dynamic shapes; the first steps compile)."""
    gradient_checkpointing: bool = False
    """Recompute the LLM's (and a trainable encoder's) layer activations in the backward pass instead
    of storing them: less memory, about one more forward pass of time."""
    full_vocab_logits: bool = False
    """Apply the LM head at every position, as the reference code does, instead of only where there is a
    label. Same loss and gradients, much slower: it exists to benchmark against the reference settings."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Under ``torchrun`` with several processes: ``ddp`` keeps a whole LLM per rank and all-reduces the
    trainable gradients; ``fsdp`` also shards the frozen LLM's weights across ranks (FSDP2), for LLMs
    that do not fit one device. Ignored in a single process."""


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = 1
    """Beam size (1: greedy; the paper uses 4)."""
    max_new_tokens: int = 200
    """Upper bound on generated tokens per utterance."""
    batch_size: int = 16
    """Utterances decoded together."""
    tokens_per_second: float | None = 8.0
    """Cap generated tokens at this many per second of audio, plus 16 (speech runs at ~3-5 tokens/s;
    the cap stops a model that has not learned to stop from babbling to ``max_new_tokens``). ``None``: off."""
    normaliser: Literal["librispeech", "whisper"] = "librispeech"
    """Text normalisation applied to hypothesis and reference before WER."""


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


# --------------------------------------------------------------------------------------------
# Range checks: each (section path, predicate, expectation); violated -> ConfigError naming the key

_CHECKS: list[tuple[str, typing.Callable[[Any], bool], str]] = [
    ("data.max_train_utterances", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("data.max_duration", lambda v: v > 0, "> 0"),
    ("adapter.k", lambda v: v >= 1, ">= 1"),
    ("adapter.hidden", lambda v: v >= 1, ">= 1"),
    ("adapter.qformer_queries", lambda v: v >= 1, ">= 1"),
    ("adapter.qformer_layers", lambda v: v >= 1, ">= 1"),
    ("adapter.ctc.weight", lambda v: math.isfinite(v) and v >= 0, ">= 0 and finite"),
    ("adapter.ctc.lm_after", lambda v: v >= 0, ">= 0"),
    ("llm.lora.rank", lambda v: v >= 1, ">= 1"),
    ("llm.lora.alpha", lambda v: v > 0, "> 0"),
    ("llm.lora.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.max_steps", lambda v: v >= 1, ">= 1"),
    ("train.lr", lambda v: v > 0, "> 0"),
    ("train.weight_decay", lambda v: v >= 0, ">= 0"),
    ("train.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("train.batch_size", lambda v: v >= 1, ">= 1"),
    ("train.batch_seconds", lambda v: v is None or v > 0, "> 0 or null"),
    ("train.grad_accum", lambda v: v >= 1, ">= 1"),
    ("train.clip", lambda v: v is None or v > 0, "> 0 or null"),
    ("train.log_every", lambda v: v >= 1, ">= 1"),
    ("train.eval_every", lambda v: v >= 0, ">= 0"),
    ("train.eval_utterances", lambda v: v >= 1, ">= 1"),
    ("train.early_stop_patience", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("train.checkpoint_every", lambda v: v >= 1, ">= 1"),
    ("decode.beam", lambda v: v >= 1, ">= 1"),
    ("decode.max_new_tokens", lambda v: v >= 1, ">= 1"),
    ("decode.batch_size", lambda v: v >= 1, ">= 1"),
    ("decode.tokens_per_second", lambda v: v is None or v > 0, "> 0 or null"),
]
_REFERENCE_SCHEMES = ("hf:", "pack:", "tiny:")


def _validate(cfg: RunConfig, where: typing.Callable[[str], str]) -> None:
    for key, ok, expected in _CHECKS:
        value = get_path(cfg, key)
        if not ok(value):
            raise ConfigError(f"{where(key)}{key}: expected {expected}, got {value!r}")
    ctc = cfg.adapter.ctc
    for key, on in (("adapter.ctc.compress", ctc.compress), ("adapter.ctc.lm_after", ctc.lm_after > 0)):
        if on and ctc.weight == 0:
            raise ConfigError(f"{where(key)}{key}: needs adapter.ctc.weight > 0 (the CTC head it relies on is trained by that loss)")
    if ctc.lm_after >= cfg.train.max_steps:
        raise ConfigError(f"{where('adapter.ctc.lm_after')}adapter.ctc.lm_after: expected < train.max_steps "
                          f"({cfg.train.max_steps}), got {ctc.lm_after} (the LM loss would never train)")
    for key in ("encoder.name", "llm.name"):
        ref = get_path(cfg, key)
        if not ref.startswith(_REFERENCE_SCHEMES) or ref.split(":", 1)[1] == "":
            raise ConfigError(
                f"{where(key)}{key}: expected a model reference 'hf:<id or folder>', 'pack:<name>' or 'tiny:<name>', got {ref!r}"
            )


# --------------------------------------------------------------------------------------------
# dict -> dataclass with type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str, where: typing.Callable[[str], str]) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form (or raise)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where(key)}{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _from_dict(tp, value, key, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, where)
            except ConfigError:
                continue
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(item, v, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(vt, v, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")  # a bug in this file, not in the input


def _from_dict(cls: type, data: dict, prefix: str, where: typing.Callable[[str], str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            section = prefix or "the run config"
            raise ConfigError(f"{where(path)}unknown key {path!r}{hint}. Valid keys of {section}: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, path, where)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# YAML with line numbers, overrides, canonical form


class YamlLoader(yaml.SafeLoader):
    """A safe loader with YAML 1.2's scalars where PyYAML keeps 1.1's: ``1e-4`` is a float (1.1: a
    string), and only ``true``/``false`` are booleans (1.1 also reads ``on``, ``off``, ``yes``, ``no``
    as booleans, so ``data.scan=off`` would not be the string its option expects)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in YamlLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - YamlLoader is a SafeLoader


class SourceMap:
    """Where each dotted key of a YAML file was written (file and line) for error messages."""

    def __init__(self, path: str | None = None, lines: dict[str, int] | None = None) -> None:
        self.path = path
        self.lines = lines or {}
        self.overrides: dict[str, str] = {}  # dotted key -> the ``a.b=v`` text that set it

    def __call__(self, key: str) -> str:
        # A value set by an override is blamed on the override, not on the YAML line it replaced.
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            text = self.overrides.get(".".join(parts[:i]))
            if text is not None:
                return f"override {text!r}: "
        if self.path is None:
            return ""
        # Fall back to the closest written ancestor: an error in a default still points near it.
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return f"{self.path}:{line}: "
            parts.pop()
        return f"{self.path}: "


def read_yaml(path: str | Path) -> tuple[Any, SourceMap]:
    """Read YAML with a safe loader and record the line of every mapping key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    loader = YamlLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}

    def walk(n: yaml.Node, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[f"{prefix}[{i}]"] = v.start_mark.line + 1
                walk(v, f"{prefix}[{i}]")

    if node is not None:
        walk(node, "")
    return data, SourceMap(str(path), lines)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 0.0001)``; the value is parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return key, value


def set_path(data: dict, key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key="a.b"``, creating mappings on the way."""
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = data.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        data = nxt
    data[parts[-1]] = value


def get_path(obj: Any, key: str) -> Any:
    for p in key.split("."):
        obj = obj[p] if isinstance(obj, dict) else getattr(obj, p)
    return obj


def build_config(data: dict | None = None, *, where: typing.Callable[[str], str] | None = None) -> RunConfig:
    """Validate a plain mapping (as read from YAML) into a :class:`RunConfig`."""
    where = where or SourceMap()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where('')}expected a mapping of sections (data, encoder, adapter, llm, train, decode)")
    cfg = _from_dict(RunConfig, data, "", where)
    _validate(cfg, where)
    return cfg


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a run config from YAML (or start from defaults) and apply ``a.b=v`` overrides."""
    data, where = read_yaml(path) if path is not None else ({}, SourceMap())
    data = data or {}
    for text in overrides:
        key, value = parse_override(text)
        set_path(data, key, value)
        where.overrides[key] = text
    return build_config(data, where=where)


def to_dict(cfg: Any) -> dict:
    """Plain, JSON-ready mapping (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def canonical_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# Sections added after stores full of runs existed: at their defaults they are left out of the
# identity, so every cell run before they existed keeps its hash (and is skipped, not retrained).
_ADDED_LATER: dict[str, Any] = {"adapter.ctc": CTCConfig()}


def config_hash(cfg: Any) -> str:
    """The run's identity: sha256 of its canonical JSON (independent of key order in the YAML)."""
    data = to_dict(cfg)
    if isinstance(cfg, RunConfig):
        for key, default in _ADDED_LATER.items():
            if get_path(cfg, key) == default:
                *parents, leaf = key.split(".")
                section = data
                for p in parents:
                    section = section[p]
                del section[leaf]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(cfg: Any) -> dict[str, Any]:
    """``{"train.lr": 0.001, ...}``: the flat form logged as parameters."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and v and k not in ("test", "optional_test"):
                walk(v, key)
            else:
                out[key] = json.dumps(v) if isinstance(v, (dict, list)) else v
        return None

    walk(to_dict(cfg), "")
    return out
