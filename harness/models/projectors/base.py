"""The projector interface and its registry."""
from __future__ import annotations

import torch
import torch.nn as nn

from harness.config import AdapterConfig
from harness.registry import Registry

PROJECTORS: Registry[type["Projector"]] = Registry("projector")


class Projector(nn.Module):
    """Base class: ``forward(frames, lengths) -> (embeds, lengths)``."""

    def __init__(self, d_enc: int, d_llm: int, cfg: AdapterConfig) -> None:
        super().__init__()
        self.d_enc, self.d_llm, self.cfg = d_enc, d_llm, cfg

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
