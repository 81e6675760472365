"""FLOPs of a SLAM-ASR training step, counted from the model's shapes.

Two counts, both over real (non-padding) tokens only; padding is work a better batch would not do,
so it never counts:

- **model FLOPs** (:func:`step_flops` with ``shared_prefix=False``): what the recipe needs for each
  sequence on its own, summed over the batch: every token of the sequence forward; backward from
  the first speech token on (the prompt prefix before the speech depends on nothing that trains, so
  no gradient flows through it); the LM head at labelled positions only; the projector. This is the
  benchmark's "useful" count: an implementation that computes less (no padding, no LM head where
  there is no label, the prefix once per batch instead of once per row) does the same useful work
  in less time.
- **executed FLOPs** (``shared_prefix=True``): what our step actually runs, with the prefix computed
  once for the whole batch. ``prefix=0`` gives what a step on whole rows runs (the reference code's
  way: the prefix forward and backward in every row).

The count covers the decoder-only LLM (Llama-style blocks: q/k/v/o projections, gated MLP, causal
attention), the LM head and the projector; elementwise work (norms, activations, softmax) is a
rounding error next to them. With a frozen LLM the backward pass needs gradients with respect to
activations only, so each frozen matmul costs its forward FLOPs once more (not twice); attention's
backward costs twice its forward (gradients for queries, keys and values); a trainable projector
layer costs its forward twice more (weight and input gradients), except that the first layer's
input (encoder frames) needs no gradient.

Example::

    >>> from transformers import LlamaConfig
    >>> cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
    ...                   num_key_value_heads=2, num_hidden_layers=2, vocab_size=100)
    >>> args = dict(seq_lens=[10, 12], labelled=[3, 4], speech_tokens=[4, 5], projector_dims=(80, 32, 64), prefix=2)
    >>> model, executed = step_flops(cfg, **args), step_flops(cfg, shared_prefix=True, **args)
    >>> executed.total < model.total
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
    prefix: int = 0,
    shared_prefix: bool = False,
) -> StepFlops:
    """FLOPs for a batch of sequences with these real lengths.

    ``config``: the LLM's Hugging Face config (Llama-style decoder). ``seq_lens[b]``: real tokens of
    sequence b (prompt + speech + transcript); ``labelled[b]``: positions scored by the LM head;
    ``speech_tokens[b]``: projector outputs; ``projector_dims``: (input = k * encoder dim, hidden,
    LLM dim) of a linear projector. ``prefix``: the first this-many tokens of every sequence are the
    prompt prefix, run forward only (no gradient flows through them); ``shared_prefix``: it runs once
    for the whole batch, and every sequence attends to that copy. ``causal=False`` counts full
    attention matrices (what a dense kernel computes, and what
    :class:`torch.utils.flop_counter.FlopCounterMode` would count).
    """
    c = _text_config(config)
    d, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    hd = getattr(c, "head_dim", None) or d // heads
    ff = c.intermediate_size
    P = prefix
    if any(n < P for n in seq_lens):
        raise ValueError(f"every sequence starts with the prefix of {P} tokens; got lengths {list(seq_lens)}")
    # Per token per layer: q and o (heads * hd), k and v (kv * hd), gate/up/down of the MLP.
    per_token = layers * (2 * d * heads * hd * 2 + 2 * d * kv * hd * 2 + 3 * 2 * d * ff)
    per_pair = layers * 2 * 2 * heads * hd  # scores Q.K^T and the weighted sum A.V

    def pairs(queries: int, earlier: int) -> float:
        """Query-key pairs of ``queries`` new tokens after ``earlier`` ones."""
        return queries * earlier + (queries * (queries + 1) / 2 if causal else queries * queries)

    rows = [n - P for n in seq_lens]  # tokens after the prefix: forward and backward
    row_pairs = sum(pairs(m, P) for m in rows)
    prefix_copies = (1 if shared_prefix else len(seq_lens)) if P else 0
    fwd_linear = per_token * (sum(rows) + P * prefix_copies)
    fwd_attention = per_pair * (row_pairs + pairs(P, 0) * prefix_copies)
    head = 2 * d * vocab * sum(labelled)
    d_in, hidden, d_out = projector_dims
    projector = 2 * (d_in * hidden + hidden * d_out) * sum(speech_tokens)
    if not backward:
        return StepFlops(float(fwd_linear), float(fwd_attention), float(head), float(projector))
    # weight grads of both projector layers + input grad of the second: 2x d_in*h + 4x h*d_out per token
    projector += 2 * (d_in * hidden + 2 * hidden * d_out) * sum(speech_tokens)
    return StepFlops(float(fwd_linear + per_token * sum(rows)), float(fwd_attention + 2 * per_pair * row_pairs),
                     float(2 * head), float(projector))
