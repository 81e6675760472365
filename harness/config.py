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

import codecs
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
import reprlib
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
    tokens_per_position: float | None = None
    """Also cap generated tokens at this many per position the LLM reads, plus 4. With CTC
    compression (``adapter.ctc.compress``) each position is one CTC token, so a ratio near 1-1.5
    bounds a transcript by what the CTC head heard; without it a position is k encoder frames.
    ``None``: off."""
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
    ("decode.tokens_per_position", lambda v: v is None or v > 0, "> 0 or null"),
]
_REFERENCE_SCHEMES = ("hf:", "pack:", "tiny:")


def _validate(cfg: RunConfig, where: typing.Callable[[str], str]) -> None:
    for key, ok, expected in _CHECKS:
        value = get_path(cfg, key)
        if not ok(value):
            raise ConfigError(f"{where(key)}{key}: expected {expected}, got {show(value)}")
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


_INT_LIMIT = 2**63
_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel = 160, 160, 3
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 8


def show(value: Any) -> str:
    """``repr(value)`` cut to a readable length (a value may be huge, deep, or share sub-lists)."""
    return _SHOW.repr(value)


def _check_finite(tp: Any, value: Any, key: str, where: typing.Callable[[str], str]) -> None:
    """Every float setting is finite: ``inf`` passes ``> 0`` and ``nan`` passes every ``not <`` check."""
    try:
        finite = isinstance(value, bool) or not isinstance(value, (int, float)) or math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise ConfigError(f"{where(key)}{key}: expected a finite {_type_name(tp)}, got {show(value)}")


def _coerce(tp: Any, value: Any, key: str, where: typing.Callable[[str], str]) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form (or raise)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where(key)}{key}: expected {_type_name(tp)}, got {show(value)}")
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
        if float in args:
            _check_finite(tp, value, key, where)
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
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(
                    f"{where(key)}{key}: expected {_type_name(tp)} with string keys, got the key {show(k)}")
        return {k: _coerce(vt, v, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise ConfigError(f"{where(key)}{key}: expected int within +-2**63, got {show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        _check_finite(tp, value, key, where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")  # a bug in this file, not in the input


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(path: str, names: list[str], section: str, at: str) -> ConfigError:
    close = difflib.get_close_matches(path.rsplit(".", 1)[-1], names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{at}unknown key {path!r}{hint}. Valid keys of {section}: {', '.join(names)}")


def _from_dict(cls: type, data: dict, prefix: str, where: typing.Callable[[str], str]) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise _unknown_key(path, names, prefix or "the run config", where(path))
        kwargs[key] = _coerce(hints[key], value, path, where)
    return cls(**kwargs)


def setting_type(key: Any, at: str = "") -> Any:
    """The annotation of the setting ``key`` (``"adapter.k"`` -> ``int``); a key inside a mapping
    setting (``"data.test.ls"``) is allowed. Anything else is a :class:`ConfigError` that starts with
    ``at`` (e.g. ``"study.yaml:7: "``) and names the closest valid key."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{at}expected a setting such as 'adapter.k' (a string), got {show(key)}")
    tp: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                raise _unknown_key(".".join(parts[: i + 1]), names, ".".join(parts[:i]) or "the run config", at)
            tp = _hints(tp)[part]
        elif typing.get_origin(tp) is dict and part:
            tp = typing.get_args(tp)[1]
        else:
            raise ConfigError(f"{at}{key}: {'.'.join(parts[:i])!r} is a setting ({_type_name(tp)}), not a section")
    if dataclasses.is_dataclass(tp):
        names = ", ".join(f.name for f in dataclasses.fields(tp))
        raise ConfigError(f"{at}{key}: expected a setting, got the section {key!r} (its keys: {names})")
    return tp


def coerce_setting(key: str, value: Any, at: str = "") -> Any:
    """``value`` checked against the type of setting ``key`` and in canonical form (``1`` -> ``1.0``
    for a float setting, lists -> tuples); errors start with ``at``."""
    return _coerce(setting_type(key, at), value, key, lambda _key: at)


# --------------------------------------------------------------------------------------------
# YAML with line numbers, overrides, canonical form


MAX_YAML_BYTES = 1 << 20
"""A config or study file is at most this big (the largest shipped study is a few KB)."""
MAX_YAML_DEPTH = 100
"""Collections nested deeper than this are refused (a run config is four levels deep)."""
MAX_YAML_VALUES = 100_000
"""A document may hold at most this many values once every alias is expanded (a "billion laughs"
file of 1 KB expands to 10**9 values)."""


class DuplicateKeyError(yaml.composer.ComposerError):
    """A mapping writes the same key twice: YAML would keep only the last value, silently."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {show(key)} (first written on line {first.line + 1}; "
                         "YAML would silently keep only the last value)", again)


class YamlLoader(yaml.SafeLoader):
    """A safe loader with YAML 1.2's scalars where PyYAML keeps 1.1's: ``1e-4`` is a float (1.1: a
    string), and only ``true``/``false`` are booleans (1.1 also reads ``on``, ``off``, ``yes``, ``no``
    as booleans, so ``data.scan=off`` would not be the string its option expects).

    It also refuses what PyYAML lets through silently: a key written twice in one mapping
    (:class:`DuplicateKeyError`), collections nested deeper than :data:`MAX_YAML_DEPTH`, and scalars
    whose conversion fails (a date such as ``2024-13-45``, an int of 5000 digits) are errors with a
    line instead of a bare ``ValueError``."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"collections nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # a collection as a key is refused by the constructor; `<<` merges are meant to repeat keys
            key = self.construct_object(key_node)
            if key in first:
                raise DuplicateKeyError(key, first[key], key_node.start_mark)
            first[key] = key_node.start_mark
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {show(node.value)}: {e}", node.start_mark) from None


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


class _YamlFault(Exception):
    """A YAML text that cannot be read: the message, the line (or ``None``) and whether it is a syntax error."""

    def __init__(self, message: str, line: int | None, syntax: bool) -> None:
        super().__init__(message)
        self.line, self.syntax = line, syntax


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root: yaml.Node) -> None:
    """Count the document's values with every alias expanded, visiting each node once (memoised
    sizes); refuse more than :data:`MAX_YAML_VALUES`, and aliases inside their own anchor."""
    size: dict[int, int] = {}
    active = {id(root)}
    stack = [(root, iter(_children(root)))]
    while stack:
        node, kids = stack[-1]
        kid = next(kids, None)
        if kid is None:
            stack.pop()
            active.discard(id(node))
            size[id(node)] = min(MAX_YAML_VALUES + 1, 1 + sum(size[id(k)] for k in _children(node)))
        elif id(kid) in active:
            raise _YamlFault("the collection anchored here contains an alias to itself (a recursive document)",
                             kid.start_mark.line + 1, False)
        elif id(kid) not in size:
            active.add(id(kid))
            stack.append((kid, iter(_children(kid))))
    if size[id(root)] > MAX_YAML_VALUES:
        raise _YamlFault(f"the document holds more than {MAX_YAML_VALUES} values once its aliases are expanded "
                         "(an alias bomb?); write the values out or use fewer aliases", None, False)


def _mark_text(e: yaml.MarkedYAMLError) -> str:
    """``while parsing a flow sequence (line 2): expected ',' or ']', but got '<stream end>'``"""
    text = " ".join(p for p in (e.problem, e.note) if p)
    if e.context:
        at = f" (line {e.context_mark.line + 1})" if e.context_mark is not None else ""
        text = f"{e.context}{at}: {text}"
    return text


def _load(text: str) -> tuple[Any, yaml.Node | None]:
    loader = YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node)
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def _parse(text: str) -> tuple[Any, yaml.Node | None]:
    """``text`` -> (data, root node); every fault is a :class:`_YamlFault` with a line where there is one."""
    try:
        return _load(text)
    except DuplicateKeyError as e:
        raise _YamlFault(e.problem, e.problem_mark.line + 1, False) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise _YamlFault(_mark_text(e), mark.line + 1 if mark else None, True) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise _YamlFault(f"character {e.character!r} is not allowed ({e.reason})", line, True) from None
    except yaml.YAMLError as e:
        raise _YamlFault(str(e), None, True) from None
    except RecursionError:  # a safety net: compose_node bounds the depth first
        raise _YamlFault(f"nested too deeply (at most {MAX_YAML_DEPTH} levels)", None, False) from None


def yaml_load(text: str) -> Any:
    """Parse a YAML text with :class:`YamlLoader` and the limits of :func:`read_yaml`; a fault is a
    :class:`ConfigError`."""
    try:
        return _parse(text)[0]
    except _YamlFault as e:
        raise ConfigError(f"line {e.line}: {e}" if e.line else str(e)) from None


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


def _read_text(path: Path) -> str:
    """The file's text: at most :data:`MAX_YAML_BYTES`, UTF-8 (a leading byte-order mark is dropped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES} bytes; not a config or study file")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}: {e.reason})") from None


def _key_lines(root: yaml.Node) -> dict[str, int]:
    """Dotted key -> line, walking the node graph once: a node reached again through an alias is not
    walked again (its keys keep the lines under the path that reached it first)."""
    lines: dict[str, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    namer = YamlLoader("")  # keys as the data has them: `null:` is the key None, `0x1:` is 1
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            items = []
            for k, v in node.value:
                name = namer.construct_object(k) if isinstance(k, yaml.ScalarNode) else "?"
                items.append((f"{prefix}.{name}" if prefix else str(name), k, v))
        elif isinstance(node, yaml.SequenceNode):
            items = [(f"{prefix}[{i}]", v, v) for i, v in enumerate(node.value)]
        else:
            continue
        for key, at, child in items:
            lines[key] = at.start_mark.line + 1  # after a `<<` merge, the key written here wins
        stack.extend((child, key) for key, _, child in reversed(items))  # document order
    return lines


def read_yaml(path: str | Path) -> tuple[Any, SourceMap]:
    """Read YAML with a safe loader and record the line of every mapping key.

    Every fault is a :class:`ConfigError` that names the file (and the line where there is one):
    unreadable or non-UTF-8 files, syntax errors, duplicate keys, alias bombs, too deep nesting.
    """
    path = Path(path)
    text = _read_text(path)
    try:
        data, node = _parse(text)
    except _YamlFault as e:
        what = f"invalid YAML: {e}" if e.syntax else str(e)
        raise ConfigError(f"{path}:{e.line}: {what}" if e.line else f"{path}: {what}") from None
    if node is None:
        return {}, SourceMap(str(path), {})
    return data, SourceMap(str(path), _key_lines(node))


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 0.0001)``; the value is parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = _parse(raw)[0] if raw.strip() else ""
    except _YamlFault as e:
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


_REQUIRED = object()


def get_path(obj: Any, key: str, default: Any = _REQUIRED) -> Any:
    """``obj.a.b`` (or ``obj["a"]["b"]``) for ``key="a.b"``; ``default`` where a mapping lacks a key."""
    for p in key.split("."):
        if isinstance(obj, dict) and p not in obj and default is not _REQUIRED:
            return default
        obj = obj[p] if isinstance(obj, dict) else getattr(obj, p)
    return obj


def build_config(data: dict | None = None, *, where: typing.Callable[[str], str] | None = None) -> RunConfig:
    """Validate a plain mapping (as read from YAML) into a :class:`RunConfig`."""
    where = where or SourceMap()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where('')}expected a mapping of sections (data, encoder, adapter, llm, train, decode), "
                          f"got {type(data).__name__}")
    cfg = _from_dict(RunConfig, data, "", where)
    _validate(cfg, where)
    return cfg


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a run config from YAML (or start from defaults) and apply ``a.b=v`` overrides."""
    data, where = read_yaml(path) if path is not None else ({}, SourceMap())
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where('')}expected a mapping of sections (data, encoder, adapter, llm, train, decode), "
                          f"got {type(data).__name__}")
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
_ADDED_LATER: dict[str, Any] = {"adapter.ctc": CTCConfig(), "decode.tokens_per_position": None}


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
