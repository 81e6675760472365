"""A window-level Q-Former: learned queries attend to each window of k frames."""
from __future__ import annotations

import torch
import torch.nn as nn

from harness.config import AdapterConfig
from harness.models.projectors.base import PROJECTORS, Projector
from harness.models.projectors.downsampler import Downsampler


@PROJECTORS.register("qformer")
class WindowQFormerProjector(Projector):
    """A BLIP-2 Q-Former applied per window of k frames (SALMONN's window-level design).

    Each window of k encoder frames is attended by ``adapter.qformer.queries`` learned queries through a
    Q-Former (self-attention over the queries, cross-attention into the window's frames), giving
    that many output tokens per window; a linear map takes them to the LLM's width.
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
            num_hidden_layers=cfg.qformer.layers,
            num_attention_heads=heads,
            intermediate_size=hidden * 4,
            encoder_hidden_size=d_enc,
            cross_attention_frequency=1,
        )
        self.down = Downsampler(cfg.k, cfg.tail)
        self.qformer = Blip2QFormerModel(qcfg)
        self.queries = nn.Parameter(torch.randn(1, cfg.qformer.queries, hidden) * qcfg.initializer_range)
        self.proj = nn.Linear(hidden, d_llm)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.down.output_lengths(lengths) * self.cfg.qformer.queries

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        k, q = self.cfg.k, self.cfg.qformer.queries
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
