"""Greedy joint CTC/LLM decoding (``decode.ctc_weight``): the CTC prefix scorer against torch's own CTC
loss, the chooser's stopping of a looping LLM, and the decoding path of a real (tiny) model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import audio, tiny_config
from harness.config import ConfigError, config_hash, legacy_hashes, load_config
from harness.models import build_model
from harness.models.ctc import CTCPrefixScorer, JointCTCChooser

V = 6  # tokens 0..5; the blank is class 6


def _log_probs(T: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.log_softmax(torch.randn(T, V + 1, generator=g) * 2, dim=-1)  # T, V+1


def _ctc_log_likelihood(log_probs: torch.Tensor, seq: list[int]) -> float:
    """log P(seq | x) by torch's CTC loss (the known answer)."""
    loss = F.ctc_loss(log_probs[:, None], torch.tensor([seq]), torch.tensor([log_probs.shape[0]]),
                      torch.tensor([len(seq)]), blank=V, reduction="sum")
    return -float(loss)


def _prefix_by_brute_force(log_probs: torch.Tensor, prefix: list[int]) -> float:
    """log P(the transcript starts with ``prefix``): the sum over every frame path whose collapse does."""
    T = log_probs.shape[0]
    assert T <= 5, "brute force: (V+1)^T paths"
    total = -math.inf
    for path in torch.cartesian_prod(*[torch.arange(V + 1)] * T).tolist():
        collapsed = [c for i, c in enumerate(path) if c != V and (i == 0 or c != path[i - 1])]
        if collapsed[: len(prefix)] == prefix:
            total = float(torch.logaddexp(torch.tensor(total), sum(log_probs[t, c] for t, c in enumerate(path))))
    return total


@pytest.mark.parametrize("seq", [[2], [2, 4], [3, 3], [1, 3, 3, 5]])
def test_the_end_score_of_a_grown_prefix_is_the_ctc_likelihood(seq: list[int]) -> None:
    x = _log_probs()
    scorer = CTCPrefixScorer(x)
    assert scorer.end_score() == pytest.approx(float(x[:, V].sum()), abs=1e-5)  # the empty transcript: all blank
    for tok in seq:
        scorer.scores(torch.tensor([0, tok, 5]))
        scorer.extend(tok)
    assert scorer.end_score() == pytest.approx(_ctc_log_likelihood(x, seq), abs=1e-4)


def test_prefix_scores_are_the_sum_over_every_path_that_starts_so() -> None:
    x = _log_probs(T=4, seed=3)
    scorer = CTCPrefixScorer(x)
    first = scorer.scores(torch.arange(V))
    for c in range(V):
        assert float(first[c]) == pytest.approx(_prefix_by_brute_force(x, [c]), abs=1e-4)
    scorer.extend(2)
    second = scorer.scores(torch.tensor([2, 4]))  # a repeat of the last token needs a blank between
    assert float(second[0]) == pytest.approx(_prefix_by_brute_force(x, [2, 2]), abs=1e-4)
    assert float(second[1]) == pytest.approx(_prefix_by_brute_force(x, [2, 4]), abs=1e-4)
    assert torch.logsumexp(first, 0) <= 1e-6  # prefixes of one token are disjoint events


def _peaked(tokens: list[int], frames_each: int = 2) -> torch.Tensor:
    """Frame posteriors sure of ``tokens``, each for ``frames_each`` frames, a blank between: T, V+1."""
    rows = []
    for t in tokens:
        rows += [t] * frames_each + [V]
    x = torch.full((len(rows), V + 1), -30.0)  # as sure as a trained head: the LLM (16 nats to its EOS) cannot outweigh it
    x[torch.arange(len(rows)), torch.tensor(rows)] = 0.0
    return F.log_softmax(x, dim=-1)


def test_the_ctc_term_stops_a_looping_llm() -> None:
    """An LLM sure of token 3 forever (it loops) reads audio that holds 1 3 4: the joint choice writes
    exactly what the audio holds, then ends, though the LLM never wants the end."""
    eos = V + 5  # the LLM's vocabulary is larger than the CTC head's token rows, EOS outside them
    # every token a candidate (the LLM's ties would otherwise decide which of its zero logits are)
    chooser = JointCTCChooser([CTCPrefixScorer(_peaked([1, 3, 4]))], eos, weight=0.5, candidates=eos)
    logits = torch.zeros(1, eos + 1)
    logits[0, 3], logits[0, eos] = 8.0, -8.0
    out = []
    for _ in range(10):
        tok = int(chooser(torch.tensor([0]), logits)[0])
        if tok == eos:
            break
        out.append(tok)
    assert out == [1, 3, 4]
    alone = JointCTCChooser([CTCPrefixScorer(_peaked([1, 3, 4]))], eos, weight=1e-6, candidates=eos)
    assert int(alone(torch.tensor([0]), logits)[0]) == 3  # (almost) no CTC: the LLM's own choice


def test_joint_decoding_of_a_real_model_is_batch_independent(utts_by_duration) -> None:
    utts = [utts_by_duration[i] for i in (0, 2, 5)]
    model = build_model(tiny_config("adapter.k=1", "adapter.ctc.weight=1", "adapter.ctc.compress=true")).eval()
    with torch.no_grad():
        frames, lengths = model.encode([audio(u) for u in utts])
    kw = {"max_new_tokens": 6, "ctc_weight": 0.5, "ctc_candidates": 4}
    batched = model.generate_frames(frames, lengths, **kw)
    alone = [model.generate_frames(frames[i : i + 1, : int(lengths[i])], lengths[i : i + 1], **kw)[0] for i in range(3)]
    assert batched == alone
    plain = model.generate_frames(frames, lengths, max_new_tokens=6)
    assert model.generate_frames(frames, lengths, max_new_tokens=6, ctc_weight=0.0) == plain
    with pytest.raises(ValueError, match="decode.beam=1"):
        model.generate_frames(frames, lengths, beam=2, **kw)
    recipe = build_model(tiny_config("adapter.k=1")).eval()
    with pytest.raises(ValueError, match="needs a CTC head"):
        recipe.generate_frames(frames, lengths, **kw)


def test_decode_ctc_settings_are_validated_and_keep_every_identity() -> None:
    with pytest.raises(ConfigError, match=r"decode.ctc_weight: needs adapter.ctc.weight > 0"):
        load_config(None, ["decode.ctc_weight=0.3"])
    with pytest.raises(ConfigError, match=r"decode.ctc_weight: joint CTC decoding is greedy; expected decode.beam: 1, got 4"):
        load_config(None, ["adapter.ctc.weight=1", "decode.ctc_weight=0.3", "decode.beam=4"])
    with pytest.raises(ConfigError, match=r"decode.ctc_weight: expected a number in \[0, 1\], got 1.5"):
        load_config(None, ["adapter.ctc.weight=1", "decode.ctc_weight=1.5"])
    with pytest.raises(ConfigError, match=r"decode.ctc_candidates: expected >= 1, got 0"):
        load_config(None, ["decode.ctc_candidates=0"])
    # What the code before these settings gave: adding them renamed no cell, in any identity version.
    base, ctc = load_config(None), load_config(None, ["adapter.ctc.weight=1.0", "adapter.ctc.compress=true"])
    assert config_hash(base) == "7908141dc4fcb4a830eabf4e68169a79fc08b10343f40d1c49bfc0da2c849c15"
    assert legacy_hashes(base)[2] == "0bea48b2459574972be2682bafb7d008158c33b72f5766ce1d402ae8d769c293"
    assert config_hash(ctc) == "4007068f3ae2a9de30c89562272fdcc55dc2d1a6e0ee60eec64c0112d32b2bc0"
    assert legacy_hashes(ctc)[1] == "8914b69af2928ea9e26ba87e10b999c843e9b62c6e9fac32b0f3a76890dbc7c4"
    joint = load_config(None, ["adapter.ctc.weight=1.0", "adapter.ctc.compress=true", "decode.ctc_weight=0.3"])
    assert config_hash(joint) != config_hash(ctc)  # decoding with it is another experiment
