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

import math

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


class CTCPrefixScorer:
    """The CTC prefix score of one utterance's hypotheses, grown one token at a time.

    For a prefix ``g`` the score is log P(g ... | x): the probability, under the CTC head's frame
    posteriors, that the transcript *starts* with ``g`` (Watanabe et al., 2017, "Hybrid CTC/attention",
    Algorithm 2). Kept per prefix: the forward variables ``r_n[t]`` / ``r_b[t]`` (log probability of
    ``g`` having been read by frame t, ending in a token frame / a blank frame). :meth:`scores` gives
    the prefix score of ``g + c`` for many candidates ``c`` at once, :meth:`end_score` the probability
    that the transcript is exactly ``g`` (what the EOS is scored with), :meth:`extend` appends the
    chosen token. ``log_probs``: ``T, V+1`` log posteriors, the blank last (as :class:`CTCHead` makes them).
    """

    def __init__(self, log_probs: torch.Tensor) -> None:
        self.x = log_probs.float()  # T, V+1
        self.blank = self.x.shape[1] - 1
        T = self.x.shape[0]
        self.r_n = self.x.new_full((T,), -math.inf)  # the empty prefix ends in no token frame
        self.r_b = self.x[:, self.blank].cumsum(0)  # ... but in blanks all along
        self.last: int | None = None
        self.score = 0.0  # log P(empty prefix ...) = log 1
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def scores(self, cands: torch.Tensor) -> torch.Tensor:
        """Prefix scores ``K`` of ``g + c`` for candidate token ids ``cands`` (``K``), kept for :meth:`extend`."""
        T, K = self.x.shape[0], cands.numel()
        x_c, x_b = self.x[:, cands], self.x[:, self.blank]  # T, K and T
        # phi[t]: log prob that g has been read by frame t and the next frame may start c
        # (after a blank always; after a token frame only if c differs from g's last token).
        phi = torch.logaddexp(self.r_n, self.r_b)[:, None].expand(T, K).clone()  # T, K
        if self.last is not None:
            same = cands == self.last
            phi[:, same] = self.r_b[:, None]
        r_n, r_b = self.x.new_full((T, K), -math.inf), self.x.new_full((T, K), -math.inf)
        if self.last is None:
            r_n[0] = x_c[0]  # c read at the first frame
        psi = r_n[0].clone()  # K
        for t in range(1, T):
            r_n[t] = torch.logaddexp(r_n[t - 1], phi[t - 1]) + x_c[t]
            r_b[t] = torch.logaddexp(r_b[t - 1], r_n[t - 1]) + x_b[t]
            psi = torch.logaddexp(psi, phi[t - 1] + x_c[t])
        self._cache = {int(c): (r_n[:, k], r_b[:, k], float(psi[k])) for k, c in enumerate(cands.tolist())}
        return psi

    def end_score(self) -> float:
        """log P(transcript == g | x): the score of ending the hypothesis here."""
        return float(torch.logaddexp(self.r_n[-1], self.r_b[-1]))

    def extend(self, token: int) -> None:
        """Append ``token`` (scored by the last :meth:`scores` call, or scored now) to the prefix."""
        if token not in self._cache:
            self.scores(torch.tensor([token], device=self.x.device))
        self.r_n, self.r_b, self.score = self._cache[token]
        self.last, self._cache = token, {}


class JointCTCChooser:
    """Greedy joint CTC/LLM decoding: each row's next token maximises
    ``(1 - weight) x log P_llm(c | ...) + weight x (CTC prefix score of g + c  -  that of g)``
    over the LLM's ``candidates`` most likely tokens and the EOS (scored by the CTC probability that the
    transcript ends here). The CTC term makes a token the audio does not hold, or a token past the
    end of the audio, costly: it stops the loops and run-ons a frozen LLM writes from a noisy readout.
    """

    def __init__(self, scorers: list[CTCPrefixScorer], eos_id: int, *, weight: float, candidates: int) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        self.scorers, self.eos, self.weight, self.candidates = scorers, eos_id, weight, candidates

    def __call__(self, rows: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``rows`` A (utterance of each batch row), ``logits`` A, V -> the next token of each row, A."""
        logp = F.log_softmax(logits.float(), dim=-1)  # A, V
        top = logp.topk(min(self.candidates + 1, logp.shape[1]), dim=-1).indices  # A, K+1 (EOS may be among them)
        out = []
        for j, row in enumerate(rows.tolist()):
            scorer = self.scorers[row]
            cands = top[j][top[j] != self.eos][: self.candidates]  # K
            cands = cands[cands < scorer.blank]  # tokens the CTC head can write (embedding rows)
            joint = (1 - self.weight) * logp[j, cands] + self.weight * (scorer.scores(cands) - scorer.score)
            end = (1 - self.weight) * float(logp[j, self.eos]) + self.weight * (scorer.end_score() - scorer.score)
            if cands.numel() == 0 or end >= float(joint.max()):
                out.append(self.eos)
                continue
            tok = int(cands[int(joint.argmax())])
            scorer.extend(tok)
            out.append(tok)
        return torch.tensor(out, dtype=torch.long, device=logits.device)
