"""The speech-encoder interface and its registry (keyed by the Hugging Face ``model_type``)."""
from __future__ import annotations

import torch
import torch.nn as nn

from harness.config import EncoderConfig
from harness.registry import Registry

ENCODERS: Registry[type["SpeechEncoder"]] = Registry("encoder family")


class SpeechEncoder(nn.Module):
    """Common interface. ``dim`` is the output channel size, ``frame_rate`` frames per second."""

    dim: int
    frame_rate: float

    def forward(self, waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_frames(self, num_samples: int) -> int:
        """Exact output frames for an utterance of ``num_samples`` samples (used by data code and caches)."""
        raise NotImplementedError

    @classmethod
    def from_model(cls, model: nn.Module, feature_extractor, options: EncoderConfig) -> "SpeechEncoder":
        """Wrap a loaded checkpoint; a family that reads options of ``encoder.*`` overrides this."""
        return cls(model, feature_extractor)

    @property
    def cache_key(self) -> str:
        """What, besides the weights, decides the frames this encoder computes (its options), as
        text for the feature cache's fingerprint. A family without options keeps ``"native"``,
        the text caches were written with before options had their own section."""
        return "native"

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def conv_out(length: torch.Tensor | int, conv: nn.Conv1d) -> torch.Tensor | int:
    """Output length of a Conv1d for a given input length (PyTorch's formula)."""
    (k,), (s,), (p,), (d,) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return (length + 2 * p - d * (k - 1) - 1) // s + 1


def lengths_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``B`` lengths -> ``B, T`` boolean mask of valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
