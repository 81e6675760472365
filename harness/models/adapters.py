"""The trainable bridge: downsample encoder frames, project them into the LLM's embedding space.

Every projector maps ``(frames B, T, D_enc; lengths B)`` to ``(embeds B, T', D_llm; lengths' B)``
and knows its exact output length for any input length (``output_lengths``), so data code and
masks never guess. A projector is one class plus one registration line.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.config import AdapterConfig
from harness.registry import Registry

PROJECTORS: Registry[type["Projector"]] = Registry("projector")


def lengths_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``B`` lengths -> ``B, T`` boolean mask of valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Downsampler(nn.Module):
    """Concatenate every k consecutive frames on the channel axis: ``B, T, C -> B, T//k, C*k``.

    ``tail="drop"`` (the paper) discards the last ``T % k`` frames of each utterance; ``tail="pad"``
    zero-pads them into one more group. Lengths are exact per utterance, and frames past an
    utterance's own length never leak into its groups (they are zeroed first).
    """

    def __init__(self, k: int, tail: str = "drop") -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"downsample rate k must be >= 1, got {k}")
        if tail not in ("drop", "pad"):
            raise ValueError(f"tail must be 'drop' or 'pad', got {tail!r}")
        self.k, self.tail = k, tail

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths // self.k if self.tail == "drop" else (lengths + self.k - 1) // self.k

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        k = self.k
        x = x * lengths_mask(lengths, T)[:, :, None].to(x.dtype)  # zero frames past each utterance
        out_len = self.output_lengths(lengths)
        T_out = int(out_len.max()) if B else 0
        need = T_out * k
        x = F.pad(x, (0, 0, 0, need - T)) if need > T else x[:, :need]
        return x.reshape(B, T_out, C * k), out_len  # B, T//k, C*k


class Projector(nn.Module):
    """Base class: ``forward(frames, lengths) -> (embeds, lengths)``."""

    def __init__(self, d_enc: int, d_llm: int, cfg: AdapterConfig) -> None:
        super().__init__()
        self.d_enc, self.d_llm, self.cfg = d_enc, d_llm, cfg

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@PROJECTORS.register("linear")
class LinearProjector(Projector):
    """The paper's projector: concat k frames -> Linear(D*k, H) -> ReLU -> Linear(H, D_llm).

    Parameters: k*D*H + H + H*D_llm + D_llm (17.31M for Whisper-large into TinyLLaMA at k=5).
    """

    def __init__(self, d_enc: int, d_llm: int, cfg: AdapterConfig) -> None:
        super().__init__(d_enc, d_llm, cfg)
        self.down = Downsampler(cfg.k, cfg.tail)
        self.fc1 = nn.Linear(d_enc * cfg.k, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, d_llm)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.down.output_lengths(lengths)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.down(x, lengths)  # B, T, D -> B, T/k, D*k
        x = self.fc2(F.relu(self.fc1(x)))  # B, T/k, D*k -> B, T/k, H -> B, T/k, D_llm
        return x, lengths


@PROJECTORS.register("conv1d")
class Conv1dProjector(Projector):
    """Conv1d(D, H, kernel=stride=k) -> ReLU -> Linear(H, H) -> ReLU -> Linear(H, D_llm).

    The strided convolution is the downsampler (a learned weighting of the k frames rather than a
    fixed concatenation); the tail policy is the same as the linear projector's.
    """

    def __init__(self, d_enc: int, d_llm: int, cfg: AdapterConfig) -> None:
        super().__init__(d_enc, d_llm, cfg)
        self.down = Downsampler(cfg.k, cfg.tail)  # only for lengths, padding and masking
        self.conv = nn.Conv1d(d_enc, cfg.hidden, kernel_size=cfg.k, stride=cfg.k)
        self.fc1 = nn.Linear(cfg.hidden, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, d_llm)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.down.output_lengths(lengths)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        x, out_len = self.down(x, lengths)  # B, T/k, D*k (groups of k frames, tail handled)
        x = x.reshape(B * x.shape[1], self.cfg.k, D).transpose(1, 2)  # B*T/k, D, k
        x = F.relu(self.conv(x)).reshape(B, -1, self.cfg.hidden)  # B, T/k, H
        x = self.fc2(F.relu(self.fc1(x)))  # B, T/k, D_llm
        return x, out_len


@PROJECTORS.register("qformer")
class WindowQFormerProjector(Projector):
    """A BLIP-2 Q-Former applied per window of k frames (SALMONN's window-level design).

    Each window of k encoder frames is attended by ``qformer_queries`` learned queries through a
    Q-Former (self-attention over the queries, cross-attention into the window's frames), giving
    ``qformer_queries`` output tokens per window; a linear map takes them to the LLM's width.
    Windows are independent, so output length = n_windows * queries, exact per utterance.
    """

    def __init__(self, d_enc: int, d_llm: int, cfg: AdapterConfig) -> None:
        super().__init__(d_enc, d_llm, cfg)
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        hidden = min(cfg.hidden, 768)  # BLIP-2 width; heads must divide it
        heads = max(1, hidden // 64)
        while hidden % heads:  # e.g. hidden=200: 3 heads do not divide it, 2 do
            heads -= 1
        qcfg = Blip2QFormerConfig(
            hidden_size=hidden,
            num_hidden_layers=cfg.qformer_layers,
            num_attention_heads=heads,
            intermediate_size=hidden * 4,
            encoder_hidden_size=d_enc,
            cross_attention_frequency=1,
        )
        self.down = Downsampler(cfg.k, cfg.tail)
        self.qformer = Blip2QFormerModel(qcfg)
        self.queries = nn.Parameter(torch.randn(1, cfg.qformer_queries, hidden) * qcfg.initializer_range)
        self.proj = nn.Linear(hidden, d_llm)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.down.output_lengths(lengths) * self.cfg.qformer_queries

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        k, q = self.cfg.k, self.cfg.qformer_queries
        windows, n_win = self.down(x, lengths)  # B, W, k*D
        W = windows.shape[1]
        if W == 0:  # every utterance shorter than one window (tail="drop"): no tokens at all
            return x.new_zeros(B, 0, self.d_llm), n_win * q
        windows = windows.reshape(B * W, k, D)  # B*W, k, D
        # Frames of a padded tail window that lie past the utterance are masked out of cross-attention.
        frame_idx = torch.arange(W * k, device=x.device).reshape(1, W, k)
        frame_mask = (frame_idx < lengths[:, None, None]).reshape(B * W, k).long()
        frame_mask[:, 0] = 1  # windows past the end are discarded below; keep their softmax finite
        out = self.qformer(
            query_embeds=self.queries.expand(B * W, -1, -1),
            encoder_hidden_states=windows,
            encoder_attention_mask=frame_mask,
        ).last_hidden_state  # B*W, q, H
        out = self.proj(out).reshape(B, W * q, self.d_llm)  # B, W*q, D_llm
        return out, n_win * q
