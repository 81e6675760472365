"""Concatenate every k encoder frames: the recipe's downsampler, with exact lengths."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F



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
