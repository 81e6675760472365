"""Models of the real shapes with random weights, synthetic speech, and one timed training step,
for :mod:`harness.bench.gpu_check.check`.

Nothing here reads a file or downloads anything: the encoder and the LLM are built from their configs
(Whisper's encoder, a Llama decoder), the tokenizer is a word-level one whose words are ``w<id>``, the
audio is a sine sweep in noise and the transcripts are random words. Only what the check needs is
imported (torch, transformers, tokenizers and the harness' model classes), never the data layer or the
trainer, which pull in soundfile, jiwer and MLflow.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

SAMPLE_RATE = 16_000
WHISPER_TINY_EN = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80)
WHISPER_LARGE_V3 = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128)
# The tiny stand-ins use 10x the default init scale, as the tests' tiny models do: at 0.02 a 64-wide model
# writes the same token whatever it hears, which would make the decoding comparison trivially pass.
WHISPER_TINY = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=80, init_std=0.2)
SMOLLM2_135M = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192)
VICUNA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096)
LLAMA_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=2048,
                  initializer_range=0.2)
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
FIXED_WORDS = ["<pad>", "<s>", "</s>", "<unk>", "USER:", "ASSISTANT:", "Transcribe", "speech", "to", "text.",
               "<|im_start|>", "<|im_end|>", "system", "user", "assistant"]


@dataclass(frozen=True)
class Shape:
    """One model configuration of the check, and how much of it to run."""

    name: str
    title: str
    encoder: dict
    llm: dict
    projector_hidden: int = 2048
    k: int = 5
    llm_dtype: str = "float32"
    prompt_style: str = "plain"
    seconds: tuple[float, float] = (3.0, 15.0)
    """Range of the synthetic utterances' durations."""
    pool: int = 96
    batch_size: int = 4
    """Utterances per batch of the reference settings; ours takes batches of ``batch_size`` x mean seconds."""
    steps: int = 20
    """Timed training steps per variant (fewer when the section's time runs out)."""
    warmup: int = 2
    decode_utterances: int = 16
    tokens_per_second: float = 3.0
    """Transcript length: words per second of audio (BPE on read English is 3-4 tokens per second)."""
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"title": self.title, "encoder": self.encoder, "llm": self.llm, "projector": f"linear, k={self.k}, hidden {self.projector_hidden}",
                "llm_dtype": self.llm_dtype, "prompt_style": self.prompt_style, "seconds": list(self.seconds)}


_SMALL = dict(encoder=WHISPER_TINY_EN, llm=SMOLLM2_135M, prompt_style="chat", extra={"system_prompt": SMOLLM_SYSTEM})
_TINY = dict(encoder=WHISPER_TINY, llm=LLAMA_TINY, projector_hidden=64, seconds=(1.5, 4.0), pool=12, steps=3, warmup=1,
             decode_utterances=4)
SHAPES = {
    "offline-default": Shape("offline-default", "offline default: Whisper tiny.en encoder -> k=5 linear -> SmolLM2-135M shapes", **_SMALL),
    "paper-7b": Shape("paper-7b", "paper headline: Whisper large-v3 encoder -> k=5 linear (2048) -> 7B Llama/Vicuna shapes, bf16",
                      encoder=WHISPER_LARGE_V3, llm=VICUNA_7B, llm_dtype="bfloat16"),
    "tiny": Shape("tiny", "tiny stand-in for the offline default (CPU mode)", prompt_style="chat", **_TINY),
    "tiny-bf16": Shape("tiny-bf16", "tiny stand-in for the 7B headline, LLM weights in bf16 (CPU mode)", llm_dtype="bfloat16", **_TINY),
}


# ------------------------------------------------------------------------------------ models


def synthetic_tokenizer(vocab_size: int, *, chat: bool):
    """Word-level tokenizer: the prompt's words, then ``w<id>`` for every other id (one word, one token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(FIXED_WORDS)}
    vocab.update({f"w{i}": i for i in range(len(FIXED_WORDS), vocab_size)})
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build parameters directly in ``dtype`` (what ``from_pretrained(dtype=...)`` does; buffers built in fp32 stay fp32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(shape: Shape, device: torch.device | str = "cpu", *, seed: int = 0):
    """A :class:`~harness.models.speech_llm.SpeechLLM` of these shapes with random weights, built on ``device``
    (a 7B LLM is initialised on the GPU in seconds; on the CPU it would take minutes and 27 GB)."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from harness.config import AdapterConfig, LLMConfig
    from harness.models.projectors import LinearProjector
    from harness.models.encoders import WhisperSpeechEncoder
    from harness.models.speech_llm import Prompt, SpeechLLM

    device = torch.device(device)
    tok = synthetic_tokenizer(shape.llm["vocab_size"], chat=shape.prompt_style == "chat")
    torch.manual_seed(seed)
    wcfg = WhisperConfig(**shape.encoder, max_source_positions=1500, vocab_size=64, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, decoder_start_token_id=1)
    lcfg = LlamaConfig(**shape.llm, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.device(device):
        whisper = WhisperEncoder(wcfg).eval()
        with default_dtype(getattr(torch, shape.llm_dtype)):
            llm = LlamaForCausalLM(lcfg).eval()
    encoder = WhisperSpeechEncoder(whisper, WhisperFeatureExtractor(feature_size=shape.encoder["num_mel_bins"]), input_mode="native")
    encoder.requires_grad_(False)
    llm.requires_grad_(False)
    torch.manual_seed(seed)
    projector = LinearProjector(encoder.dim, shape.llm["hidden_size"], AdapterConfig(k=shape.k, hidden=shape.projector_hidden))
    llm_cfg = LLMConfig(name=f"synthetic:{shape.name}", prompt_style=shape.prompt_style, casing="as_is",
                        system_prompt=shape.extra.get("system_prompt"))
    return SpeechLLM(encoder, projector, llm, Prompt(tok, llm_cfg)).to(device)


def param_counts(model) -> dict[str, float]:
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"encoder": n(model.encoder), "projector": n(model.projector), "llm": n(model.llm)}


def settings(model, variant: str) -> dict[str, Any]:
    """Switch the model to our settings or the reference code's (what ``harness bench`` means by them)."""
    ours = variant == "ours"
    model.encoder.input_mode = "native" if ours else "pad30"  # reference: log-mel padded to 30 s
    model.full_vocab_logits = not ours  # reference: the LM head over every position
    model.share_prefix = ours  # reference: the prompt prefix runs in every row
    model.use_onednn_linears(ours and model.prefix_ids.device.type == "cpu")
    return {"input_mode": model.encoder.input_mode, "encoder_cached": ours, "full_vocab_logits": model.full_vocab_logits,
            "share_prefix": model.shares_prefix, "packed_weights": model.packs_weights,
            "batches": "by audio seconds, bucketed by length" if ours else "fixed count, random lengths"}


# ------------------------------------------------------------------------------------ data


@dataclass
class Pool:
    """Synthetic utterances: 16-kHz waveforms (CPU, fp32) and transcripts of random words."""

    waves: list[torch.Tensor]
    texts: list[str]

    @property
    def durations(self) -> list[float]:
        return [w.numel() / SAMPLE_RATE for w in self.waves]


def sweep(seconds: float, gen: torch.Generator) -> torch.Tensor:
    """A rising sine sweep with a syllable-rate envelope in noise (speech-like level and bandwidth)."""
    n = int(seconds * SAMPLE_RATE)
    t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
    f0, f1 = 100 + 200 * float(torch.rand((), generator=gen)), 1000 + 2000 * float(torch.rand((), generator=gen))
    phase = 2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t)
    wave = 0.1 * envelope * torch.sin(phase) + 0.01 * torch.randn(n, generator=gen, dtype=torch.float64)
    return wave.float()


def synthetic_pool(shape: Shape, *, n: int | None = None, seed: int = 0) -> Pool:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = shape.seconds
    words = range(len(FIXED_WORDS), shape.llm["vocab_size"])
    waves, texts = [], []
    for _ in range(n or shape.pool):
        seconds = lo + (hi - lo) * float(torch.rand((), generator=gen))
        waves.append(sweep(seconds, gen))
        ids = torch.randint(words.start, words.stop, (max(1, round(shape.tokens_per_second * seconds)),), generator=gen)
        texts.append(" ".join(f"w{i}" for i in ids.tolist()))
    return Pool(waves, texts)


def batches(pool: Pool, variant: str, batch_size: int, *, seed: int = 0) -> list[list[int]]:
    """Ours: length-bucketed batches of ``batch_size`` x the mean duration in seconds; reference: ``batch_size``
    utterances of random lengths. Both in a seeded random order."""
    gen = torch.Generator().manual_seed(seed)
    dur = pool.durations
    if variant == "reference":
        order = torch.randperm(len(dur), generator=gen).tolist()
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    budget = batch_size * sum(dur) / len(dur)
    out, cur, total = [], [], 0.0
    for i in sorted(range(len(dur)), key=dur.__getitem__):
        if cur and total + dur[i] > budget:
            out.append(cur)
            cur, total = [], 0.0
        cur.append(i)
        total += dur[i]
    out.append(cur)
    return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


# ------------------------------------------------------------------------------------ steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, enabled: bool | None = None) -> torch.autocast:
    """bf16 autocast on CUDA (the trainer's ``precision=auto``), fp32 on the CPU unless asked."""
    on = device.type == "cuda" if enabled is None else enabled
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


@torch.no_grad()
def encode_pool(model, pool: Pool, *, batch: int = 8, amp: bool | None = None) -> list[torch.Tensor]:
    """Every utterance's encoder frames at native length, on the model's device (what the feature cache holds)."""
    device = model.prefix_ids.device
    order = sorted(range(len(pool.waves)), key=lambda i: pool.waves[i].numel())
    frames: list[torch.Tensor | None] = [None] * len(order)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        with autocast(device, amp):
            f, lengths = model.encode([pool.waves[i] for i in idx])
        for j, i in enumerate(idx):
            frames[i] = f[j, : int(lengths[j])].clone()
    return frames  # type: ignore[return-value]


def padded(frames: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([f.shape[0] for f in frames], device=frames[0].device)
    return torch.nn.utils.rnn.pad_sequence(frames, batch_first=True), lengths


def step_flops(model, lengths: torch.Tensor, texts: list[str]) -> dict[str, float]:
    """Useful (model) FLOPs of a step, the prompt prefix forward in every row, and what our step executes
    (:mod:`harness.bench.flops`; the same count as ``harness bench``)."""
    from harness.bench.flops import step_flops as count

    speech = model.projector.output_lengths(lengths.cpu()).tolist()
    targets = [len(model.prompt.target_ids(t)) for t in texts]
    P, S = len(model.prompt.prefix_ids), len(model.prompt.suffix_ids)
    p = model.projector
    args = dict(seq_lens=[P + s + S + t for s, t in zip(speech, targets)], labelled=targets, speech_tokens=speech,
                projector_dims=(p.fc1.in_features, p.fc1.out_features, p.fc2.out_features))
    executed = dict(prefix=P, shared_prefix=True) if model.shares_prefix else dict(prefix=0)
    return {"model": count(model.llm.config, prefix=P, **args).total, "executed": count(model.llm.config, **executed, **args).total}


def train_step(model, opt, batch: list[int], pool: Pool, cache: list[torch.Tensor] | None, *, amp: bool | None = None) -> dict[str, Any]:
    """One optimizer step on ``batch``. ``cache``: cached encoder frames (ours); ``None`` runs the encoder on
    the audio in the step (the reference). Timed from the audio (or cached frames) to the updated weights."""
    device = model.prefix_ids.device
    texts = [pool.texts[i] for i in batch]
    sync(device)
    start = time.perf_counter()
    if cache is None:
        with torch.no_grad(), autocast(device, amp):
            frames, lengths = model.encode([pool.waves[i] for i in batch])
    else:
        frames, lengths = padded([cache[i] for i in batch])
    with autocast(device, amp):
        out = model.forward_frames(frames, lengths, texts)
    out["loss"].backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    return {"seconds": time.perf_counter() - start, "loss": float(out["loss"].detach()), "lengths": lengths,
            "texts": texts, "audio_seconds": sum(pool.waves[i].numel() for i in batch) / SAMPLE_RATE}


def optimizer(model, lr: float = 1e-4) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, fused=params[0].device.type in ("cpu", "cuda"))
