"""Useful FLOPs of a SLAM-ASR training step, counted from the model's shapes.

"Useful" means the matrix multiplications that the real (non-padding) tokens of each sequence
need: a padded batch costs more, and that extra work is exactly what bucketing and label-only LM
heads save, so it must not count as work done. The count covers the decoder-only LLM (Llama-style
blocks: q/k/v/o projections, gated MLP, causal attention), the LM head at labelled positions and the
projector; elementwise work (norms, activations, softmax) is a rounding error next to them.

With a frozen LLM the backward pass needs gradients with respect to activations only, so each
frozen matmul costs its forward FLOPs once more (not twice); attention's backward costs twice its
forward (gradients for queries, keys and values); a trainable projector layer costs its forward
twice more (weight and input gradients), except that the first layer's input (encoder frames) needs
no gradient.

Example::

    >>> from transformers import LlamaConfig
    >>> cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
    ...                   num_key_value_heads=2, num_hidden_layers=2, vocab_size=100)
    >>> f = step_flops(cfg, seq_lens=[10], labelled=[3], speech_tokens=[4], projector_dims=(80, 32, 64))
    >>> f.total > 0
    True
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step (forward + backward) by part."""

    llm_linear: float
    attention: float
    lm_head: float
    projector: float

    @property
    def total(self) -> float:
        return self.llm_linear + self.attention + self.lm_head + self.projector

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def step_flops(
    config,
    *,
    seq_lens: Sequence[int],
    labelled: Sequence[int],
    speech_tokens: Sequence[int],
    projector_dims: tuple[int, int, int],
    causal: bool = True,
    backward: bool = True,
) -> StepFlops:
    """FLOPs for a batch of sequences with these real lengths.

    ``config``: the LLM's Hugging Face config (Llama-style decoder). ``seq_lens[b]``: real tokens of
    sequence b (prompt + speech + transcript); ``labelled[b]``: positions scored by the LM head;
    ``speech_tokens[b]``: projector outputs; ``projector_dims``: (input = k * encoder dim, hidden,
    LLM dim) of a linear projector. ``causal=False`` counts full attention matrices (what a dense
    kernel computes, and what :class:`torch.utils.flop_counter.FlopCounterMode` would count).
    """
    c = _text_config(config)
    d, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    hd = getattr(c, "head_dim", None) or d // heads
    ff = c.intermediate_size
    # Per token per layer: q and o (heads * hd), k and v (kv * hd), gate/up/down of the MLP.
    per_token = 2 * d * heads * hd * 2 + 2 * d * kv * hd * 2 + 3 * 2 * d * ff
    n_tokens = sum(seq_lens)
    pairs = sum(n * (n + 1) / 2 if causal else n * n for n in seq_lens)
    linear = layers * per_token * n_tokens
    attention = layers * 2 * 2 * heads * hd * pairs  # scores Q.K^T and the weighted sum A.V
    head = 2 * d * vocab * sum(labelled)
    d_in, hidden, d_out = projector_dims
    proj_fwd = 2 * (d_in * hidden + hidden * d_out) * sum(speech_tokens)
    if backward:
        linear, attention, head = 2 * linear, 3 * attention, 2 * head
        # weight grads of both layers + input grad of the second: 2x d_in*h + 4x h*d_out per token
        projector = proj_fwd + 2 * (d_in * hidden + 2 * hidden * d_out) * sum(speech_tokens)
    else:
        projector = proj_fwd
    return StepFlops(float(linear), float(attention), float(head), float(projector))
