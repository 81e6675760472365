"""The experiment tree: one frozen dataclass per section of a run, a docstring per field.

Fields marked :data:`EXECUTION` say how a run is executed (device, compilation, logging and
checkpoint cadence, caches, decode batch), not what it learns: they are logged but are not part of
the run's identity (:mod:`harness.config.identity`). Validation raises :class:`ConfigError` naming
the key and never repairs a value.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.config.errors import ConfigError, show
from harness.config.keys import get_path

EXECUTION = {"execution": True}
"""Field metadata of a setting that says how a run is executed, not what it learns: logged, not
part of the run's identity (turning on ``compile`` or moving to a GPU resumes the same cell)."""


def is_execution(f: dataclasses.Field) -> bool:
    """Whether the dataclass field ``f`` is an execution setting (see :data:`EXECUTION`)."""
    return bool(f.metadata.get("execution"))


class FrozenDict(dict):
    """A mapping setting (``data.test``): a ``dict`` that refuses changes and hashes, so that a whole
    config tree is immutable and hashable."""

    def _refuse(self, *args: Any, **kwargs: Any) -> typing.NoReturn:
        raise TypeError("a config mapping is immutable; build a new config instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self) -> tuple:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> "FrozenDict":
        return self

    def __deepcopy__(self, memo: dict) -> "FrozenDict":
        return self


# --------------------------------------------------------------------------------------------
# The sections of a run


@dataclass(frozen=True)
class DataConfig:
    train: str = "data/synth/train.jsonl"
    """JSONL manifest of training utterances (``id``, ``audio``, ``text``, ``duration``)."""
    dev: str = "data/synth/dev.jsonl"
    """JSONL manifest used for evaluation during training (loss, accuracy, WER on a subset)."""
    test: dict[str, str] = field(
        default_factory=lambda: FrozenDict(
            {"synth-test": "data/synth/test.jsonl", "synth-test-unseen": "data/synth/test_unseen.jsonl"})
    )
    """Test splits, name -> manifest; each gets a WER at the end of the run."""
    optional_test: dict[str, str] = field(default_factory=FrozenDict)
    """Test splits that are decoded only when their manifest exists (e.g. real LibriSpeech). Evaluation
    only: not part of the run's identity, so a split that appears later does not make a new cell."""
    max_train_utterances: int | None = None
    """Use only the first N training utterances (``None``: all)."""
    max_duration: float = 30.0
    """Utterances longer than this many seconds are skipped with a counted warning (Whisper's window is 30 s)."""
    scan: Literal["header", "decode", "off"] = field(default="header", metadata=EXECUTION)
    """Check every audio file before training: read headers (fast), decode fully (catches truncated/NaN
    audio), or not at all."""
    on_bad_audio: Literal["skip", "stop"] = "skip"
    """A file the scan finds bad: skip its utterance (counted, listed in bad_audio.jsonl) or stop the run."""


# Per-family options: a section named after the encoder family or projector that reads it, and
# nothing else does (a new family with options adds one dataclass here and one field below).


@dataclass(frozen=True)
class WhisperOptions:
    """Options of the Whisper encoder family (``encoder.whisper.*``); other families ignore them."""

    input_mode: Literal["native", "pad30"] = "native"
    """``pad30`` pads log-mel to 30 s as the paper; ``native`` keeps the utterance's length."""


@dataclass(frozen=True)
class QFormerOptions:
    """Options of the ``qformer`` projector (``adapter.qformer.*``); other projectors ignore them."""

    queries: int = 1
    """Learned queries per window of k frames (output tokens per window)."""
    layers: int = 2
    """Number of transformer layers."""


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "pack:whisper-tiny.en"
    """Model reference: ``hf:<id or folder>``, ``pack:<name>`` or ``tiny:<name>``."""
    whisper: WhisperOptions = field(default_factory=WhisperOptions)
    """Whisper's own options."""
    trainable: bool = False
    """Train the encoder with the projector (the paper freezes it)."""
    cache: bool = field(default=True, metadata=EXECUTION)
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
    qformer: QFormerOptions = field(default_factory=QFormerOptions)
    """The Q-Former projector's own options."""
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
    log_every: int = field(default=1, metadata=EXECUTION)
    """Log training metrics every N optimizer steps."""
    eval_every: int = 100
    """Evaluate on dev every N optimizer steps (0: only at the end)."""
    eval_utterances: int = 64
    """Dev utterances used for each evaluation (loss, accuracy; WER by greedy decoding)."""
    early_stop_patience: int | None = None
    """Stop after this many evaluations without a better dev loss (``None``: never)."""
    checkpoint_every: int = field(default=50, metadata=EXECUTION)
    """Write a resumable checkpoint every N optimizer steps."""
    order: Literal["shuffle", "short_first"] = "shuffle"
    """Data order: every epoch shuffled, or ``short_first``: the first epoch runs from the shortest
    utterances to the longest (a length curriculum), later epochs are shuffled."""
    device: str = field(default="auto", metadata=EXECUTION)
    """``auto`` (cuda when available), ``cpu`` or ``cuda[:i]``."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 autocast on CUDA, fp32 on CPU (bf16 matmul on CPUs without AMX is ~100x slower);
    ``bf16``: autocast to bf16 on any device; ``fp32``: no autocast."""
    compile: bool = field(default=False, metadata=EXECUTION)
    """``torch.compile`` the LLM's decoder and the projector (dynamic shapes; the first steps compile)."""
    gradient_checkpointing: bool = field(default=False, metadata=EXECUTION)
    """Recompute the LLM's (and a trainable encoder's) layer activations in the backward pass instead
    of storing them: less memory, about one more forward pass of time."""
    full_vocab_logits: bool = field(default=False, metadata=EXECUTION)
    """Apply the LM head at every position, as the reference code does, instead of only where there is a
    label. Same loss and gradients, much slower: it exists to benchmark against the reference settings."""
    parallel: Literal["ddp", "fsdp"] = field(default="ddp", metadata=EXECUTION)
    """Under ``torchrun`` with several processes: ``ddp`` keeps a whole LLM per rank and all-reduces the
    trainable gradients; ``fsdp`` also shards the frozen LLM's weights across ranks (FSDP2), for LLMs
    that do not fit one device. Ignored in a single process."""


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = 1
    """Beam size (1: greedy; the paper uses 4)."""
    max_new_tokens: int = 200
    """Upper bound on generated tokens per utterance."""
    batch_size: int = field(default=16, metadata=EXECUTION)
    """Utterances decoded together (batched and one-by-one decoding write the same transcripts)."""
    tokens_per_second: float | None = 8.0
    """Cap generated tokens at this many per second of audio, plus 16 (speech runs at ~3-5 tokens/s;
    the cap stops a model that has not learned to stop from babbling to ``max_new_tokens``). ``None``: off."""
    tokens_per_position: float | None = None
    """Also cap generated tokens at this many per position the LLM reads, plus 4. With CTC
    compression (``adapter.ctc.compress``) each position is one CTC token, so a ratio near 1-1.5
    bounds a transcript by what the CTC head heard; without it a position is k encoder frames.
    ``None``: off."""
    ctc_weight: float = 0.0
    """Greedy joint CTC/LLM decoding (a departure from the paper, which decodes with the LLM alone):
    each next token maximises ``(1 - w) x LLM log-prob + w x CTC prefix score`` (Watanabe et al., 2017)
    of the CTC head (``adapter.ctc``), so tokens the audio does not hold, and run-ons past its end, cost
    what the head says they cost. In [0, 1]; 0: the LLM alone. Needs ``adapter.ctc.weight > 0`` and ``beam: 1``."""
    ctc_candidates: int = 32
    """With ``ctc_weight`` > 0: how many of the LLM's most likely next tokens the CTC head scores (and the EOS).
    Too few lose the tokens the head hears but a frozen LLM, reading a noisy readout, does not rank high
    (cell 6 of studies/english_emergence.yaml at ctc_weight 0.7: 8 -> 61.5 %, 32 -> 51.1 % WER on real LibriSpeech)."""
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

CHECKS: list[tuple[str, typing.Callable[[Any], bool], str]] = [
    ("data.max_train_utterances", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("data.max_duration", lambda v: v > 0, "> 0"),
    ("adapter.k", lambda v: v >= 1, ">= 1"),
    ("adapter.hidden", lambda v: v >= 1, ">= 1"),
    ("adapter.qformer.queries", lambda v: v >= 1, ">= 1"),
    ("adapter.qformer.layers", lambda v: v >= 1, ">= 1"),
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
    ("decode.ctc_weight", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("decode.ctc_candidates", lambda v: v >= 1, ">= 1"),
]
_REFERENCE_SCHEMES = ("hf:", "pack:", "tiny:")

MOVED: dict[str, str] = {
    "encoder.input_mode": "encoder.whisper.input_mode",
    "adapter.qformer_queries": "adapter.qformer.queries",
    "adapter.qformer_layers": "adapter.qformer.layers",
}
"""Keys that moved into a family's own options: old key -> new key (named by the unknown-key error)."""


def validate(cfg: RunConfig, where: typing.Callable[[str], str]) -> None:
    for key, ok, expected in CHECKS:
        value = get_path(cfg, key)
        if not ok(value):
            raise ConfigError(f"{where(key)}{key}: expected {expected}, got {show(value)}")
    ctc = cfg.adapter.ctc
    for key, on in (("adapter.ctc.compress", ctc.compress), ("adapter.ctc.lm_after", ctc.lm_after > 0)):
        if on and ctc.weight == 0:
            raise ConfigError(f"{where(key)}{key}: needs adapter.ctc.weight > 0 (the CTC head it relies on is trained by that loss)")
    if cfg.decode.ctc_weight > 0 and ctc.weight == 0:
        raise ConfigError(f"{where('decode.ctc_weight')}decode.ctc_weight: needs adapter.ctc.weight > 0 (joint decoding "
                          "scores with the CTC head that loss trains)")
    if cfg.decode.ctc_weight > 0 and cfg.decode.beam != 1:
        raise ConfigError(f"{where('decode.ctc_weight')}decode.ctc_weight: joint CTC decoding is greedy; expected "
                          f"decode.beam: 1, got {cfg.decode.beam}")
    if ctc.lm_after >= cfg.train.max_steps:
        raise ConfigError(f"{where('adapter.ctc.lm_after')}adapter.ctc.lm_after: expected < train.max_steps "
                          f"({cfg.train.max_steps}), got {ctc.lm_after} (the LM loss would never train)")
    for key in ("encoder.name", "llm.name"):
        ref = get_path(cfg, key)
        if not ref.startswith(_REFERENCE_SCHEMES) or ref.split(":", 1)[1] == "":
            raise ConfigError(
                f"{where(key)}{key}: expected a model reference 'hf:<id or folder>', 'pack:<name>' or 'tiny:<name>', got {ref!r}"
            )
