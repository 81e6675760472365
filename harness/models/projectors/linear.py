"""The paper's projector: downsample, then Linear-ReLU-Linear."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.config import AdapterConfig
from harness.models.projectors.base import PROJECTORS, Projector
from harness.models.projectors.downsampler import Downsampler


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
