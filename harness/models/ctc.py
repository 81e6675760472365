"""Auxiliary CTC on the projector's outputs, and CTC compression of what the LLM sees.

A departure from the paper's recipe (off by default, ``adapter.ctc.weight=0``). The projector's
outputs are read as the LLM's own tokens: the logits of frame ``t`` over the vocabulary are its
dot products with the LLM's (frozen) token-embedding matrix, plus one learned *blank* vector,
a class that is no token at all::

    x  B, T', H  (projector output)  ->  logits  B, T', V+1  =  x @ [E; b]^T      (E: V, H frozen; b: H learned)

The CTC loss against the transcript's LLM tokens gives every frame a target, where the LM loss
gives the projector only what trickles back through a frozen LLM: the projector learns an
alignment to the LLM's token space within a few hundred steps.

*Compression* (``adapter.ctc.compress``) then uses that alignment: frames whose best class is the
blank are dropped and each run of frames with the same best token is merged into one vector, so
the LLM reads about one vector per token instead of ten per second of speech. What a merged run
gives the LLM (``adapter.ctc.readout``):

- ``projector``: the mean of the run's projector vectors, rescaled to the RMS of a token embedding;
- ``posterior``: the mean over the run of each frame's posterior over tokens (blank removed)
  times the embedding matrix: a point inside the LLM's own embedding cloud, exactly a token's
  embedding when the CTC head is sure.

Which frames merge is decided by the argmax (no gradient); the merged vectors are differentiable
in the projector's outputs, so the LM loss still trains the projector through them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class CTCHead(nn.Module):
    """The learned blank, the CTC loss, greedy CTC readout and compression.

    ``embedding`` is the LLM's input-embedding module; it is not registered here (its weights are the
    LLM's, frozen), only read at every call, so FSDP sharding or device moves of the LLM apply to it too.
    """

    def __init__(self, d_llm: int, *, readout: str = "projector") -> None:
        super().__init__()
        if readout not in ("projector", "posterior"):
            raise ValueError(f"readout must be 'projector' or 'posterior', got {readout!r}")
        self.readout = readout
        self.blank = nn.Parameter(torch.zeros(d_llm))  # H: the logit of "no token" is x . b

    def logits(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x`` B, T, H and the embedding matrix V, H -> B, T, V+1 (the blank is class V)."""
        tokens = x @ weight.to(x.dtype).t()  # B, T, H -> B, T, V
        blank = x @ self.blank.to(x.dtype)  # B, T
        return torch.cat([tokens, blank[..., None]], dim=-1)

    def loss(self, logits: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """Mean over utterances of CTC loss per target token (an utterance whose frames cannot hold its
        tokens contributes 0, as ``zero_infinity`` makes it, instead of an infinite loss)."""
        V1 = logits.shape[-1]
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # T, B, V+1
        flat = torch.tensor([t for ts in targets for t in ts], dtype=torch.long, device=logits.device)
        target_lens = torch.tensor([len(ts) for ts in targets], dtype=torch.long, device=logits.device)
        return F.ctc_loss(log_probs, flat, lengths.to(torch.long), target_lens, blank=V1 - 1,
                          reduction="mean", zero_infinity=True)

    @staticmethod
    def greedy(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Best path per utterance: repeats merged, blanks removed -> LLM token ids."""
        blank = logits.shape[-1] - 1
        best = logits.argmax(-1)  # B, T
        out = []
        for b in range(best.shape[0]):
            ids = torch.unique_consecutive(best[b, : int(lengths[b])]).tolist()
            out.append([i for i in ids if i != blank])
        return out

    def compress(
        self, x: torch.Tensor, lengths: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, embed_rms: torch.Tensor,
        embed_scale: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop blank frames, merge runs of one token: ``B, T, H -> B, S, H`` with S <= T per row.

        A row whose every frame is blank keeps one vector (the mean of all its frames), so the LLM
        always sees some speech and decoding never starts from an empty utterance.
        """
        B, T, H = x.shape
        blank = logits.shape[-1] - 1
        best = logits.argmax(-1)  # B, T
        if self.readout == "posterior":  # B, T, V: posterior over tokens with the blank taken out
            probs = F.softmax(logits[..., :blank].float(), dim=-1).to(x.dtype)
            values = (probs @ weight.to(x.dtype)) * embed_scale  # B, T, H: inside the embedding cloud
        else:
            values = x
        rows, out_lens = [], []
        for b in range(B):
            L = int(lengths[b])
            lab = best[b, :L]
            keep = lab != blank
            if not bool(keep.any()):
                seg = values[b, :max(L, 1)].mean(0, keepdim=True)  # 1, H
            else:
                idx = keep.nonzero().squeeze(1)  # frames that carry a token
                lab_k = lab[idx]
                # a new segment starts where the token changes or a blank (or gap) separated two frames
                new = torch.ones_like(lab_k, dtype=torch.bool)
                new[1:] = (lab_k[1:] != lab_k[:-1]) | (idx[1:] != idx[:-1] + 1)
                seg_id = new.cumsum(0) - 1  # N
                S = int(seg_id[-1]) + 1
                sums = values.new_zeros(S, H).index_add(0, seg_id, values[b, idx])
                counts = torch.bincount(seg_id, minlength=S).to(values.dtype)[:, None]
                seg = sums / counts  # S, H
            rows.append(seg)
            out_lens.append(seg.shape[0])
        S_max = max(out_lens)
        out = x.new_zeros(B, S_max, H)
        for b, seg in enumerate(rows):
            out[b, : seg.shape[0]] = seg.to(out.dtype)
        if self.readout == "projector":  # each vector to the scale of a token embedding
            out = out * (embed_rms / (out.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6))
        return out, torch.tensor(out_lens, dtype=torch.long, device=x.device)
