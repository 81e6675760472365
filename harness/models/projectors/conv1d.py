"""A strided 1-D convolution as the downsampler, then the MLP."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.config import AdapterConfig
from harness.models.projectors.base import PROJECTORS, Projector
from harness.models.projectors.downsampler import Downsampler


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
