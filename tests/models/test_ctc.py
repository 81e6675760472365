"""Auxiliary CTC on the projector (adapter.ctc): the loss, its gradient path, compression, the CTC-only phase."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import audio, tiny_config
from harness.config import ConfigError, config_hash, legacy_hashes, load_config
from harness.data.manifest import write_manifest
from harness.models import build_model
from harness.models.ctc import CTCHead
from harness.tracking.trackers import LocalTracker
from harness.run.trainer import run_training

# Tiny Llama's tokenizer spells words letter by letter: k=1 leaves the CTC enough frames per token.
K1 = ("adapter.k=1",)


@pytest.fixture(scope="module")
def utts(utts_by_duration) -> list:
    return [utts_by_duration[i] for i in (0, 2, 5)]


def _batch(model, utts):
    with torch.no_grad():
        return model.encode([audio(u) for u in utts])


def _grads(model, out_key: str, frames, lengths, texts) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model.forward_frames(frames, lengths, texts)
    out[out_key].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_ctc_gradient_reaches_only_the_projector_and_the_blank(utts) -> None:
    model = build_model(tiny_config(*K1, "adapter.ctc.weight=1")).train()
    frames, lengths = _batch(model, utts)
    texts = [u.text for u in utts]
    model.run_lm = False  # the objective is the CTC loss alone
    grads = _grads(model, "objective", frames, lengths, texts)
    assert set(grads) == {"projector.fc1.weight", "projector.fc1.bias", "projector.fc2.weight", "projector.fc2.bias", "ctc.blank"}
    assert all(float(g.abs().sum()) > 0 for g in grads.values())
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("encoder.", "llm.")) for n in frozen)


def test_ctc_weight_zero_is_exactly_the_recipe(utts) -> None:
    """No head is built at weight 0, the objective is the LM loss itself, and the gradients are the recipe's."""
    plain = build_model(tiny_config(*K1)).train()
    assert plain.ctc is None
    frames, lengths = _batch(plain, utts)
    texts = [u.text for u in utts]
    out = plain.forward_frames(frames, lengths, texts)
    assert "ctc_loss" not in out and out["objective"] is out["loss"]
    # With a head whose weight is 0, the CTC loss is computed (logged) but adds exactly nothing.
    ref = _grads(plain, "loss", frames, lengths, texts)
    zero = build_model(tiny_config(*K1, "adapter.ctc.weight=1")).train()
    zero.ctc_weight = 0.0
    got = _grads(zero, "objective", frames, lengths, texts)
    for name, g in ref.items():
        assert torch.equal(got[name], g), name
    assert "ctc.blank" not in got  # no gradient at all into the head


def test_ctc_loss_adds_weight_times_ctc(utts) -> None:
    model = build_model(tiny_config(*K1, "adapter.ctc.weight=0.5")).train()
    frames, lengths = _batch(model, utts)
    out = model.forward_frames(frames, lengths, [u.text for u in utts])
    assert float(out["ctc_loss"]) > 0
    assert math.isclose(float(out["objective"].detach()), float(out["loss"].detach()) + 0.5 * float(out["ctc_loss"]), rel_tol=1e-6)


def _brute_force_compress(labels: list[int], values: torch.Tensor, blank: int) -> torch.Tensor:
    segs, cur, prev = [], [], None
    for t, lab in enumerate(labels):
        if lab == blank:
            if cur:
                segs.append(cur)
            cur, prev = [], None
            continue
        if lab != prev and cur:
            segs.append(cur)
            cur = []
        cur.append(t)
        prev = lab
    if cur:
        segs.append(cur)
    return torch.stack([values[s].mean(0) for s in segs])


def test_compression_drops_blanks_and_merges_runs() -> None:
    head = CTCHead(4)
    V, H = 3, 4  # tokens 0..2, blank is class 3
    labels = [[3, 0, 0, 3, 0, 1, 1, 2, 3, 3], [2, 2, 2, 3, 3, 3, 3, 3, 3, 3]]
    lengths = torch.tensor([10, 4])  # the second row's last frames are padding
    logits = torch.full((2, 10, V + 1), -5.0)
    for b, row in enumerate(labels):
        for t, lab in enumerate(row):
            logits[b, t, lab] = 5.0
    x = torch.randn(2, 10, H, requires_grad=True)
    weight = torch.randn(V, H)
    out, out_lens = head.compress(x, lengths, logits, weight, torch.tensor(1.0))
    assert out_lens.tolist() == [4, 1]  # "0 | 0 1 2" -> 0, 0, 1, 2 (a blank splits the repeated 0); "2 2 2" -> 2
    for b in range(2):
        want = _brute_force_compress(labels[b][: int(lengths[b])], x.detach()[b], V)
        got = out[b, : out_lens[b]].detach()
        rms = want.pow(2).mean(-1, keepdim=True).sqrt()
        torch.testing.assert_close(got, want / rms)  # rescaled to the embedding RMS (1 here)
    out.sum().backward()  # the merged vectors are differentiable in the projector outputs
    assert x.grad[0, 0].abs().sum() == 0  # a blank frame gets no gradient from the LLM side
    assert x.grad[0, 1].abs().sum() > 0


def test_posterior_readout_is_the_token_embedding_when_sure() -> None:
    head = CTCHead(4, readout="posterior")
    weight = torch.randn(3, 4)
    logits = torch.full((1, 3, 4), -30.0)
    logits[0, 0, 2] = logits[0, 1, 3] = logits[0, 2, 0] = 30.0  # token 2, blank, token 0
    out, lens = head.compress(torch.randn(1, 3, 4), torch.tensor([3]), logits, weight, torch.tensor(1.0), embed_scale=2.0)
    assert lens.tolist() == [2]
    torch.testing.assert_close(out[0], 2.0 * weight[[2, 0]])


def test_an_all_blank_row_keeps_one_vector() -> None:
    head = CTCHead(2)
    logits = torch.zeros(1, 5, 3)
    logits[..., 2] = 9.0  # every frame blank
    out, lens = head.compress(torch.randn(1, 5, 2), torch.tensor([5]), logits, torch.randn(2, 2), torch.tensor(1.0))
    assert lens.tolist() == [1] and out.shape == (1, 1, 2)


def test_compressed_model_decodes_and_ctc_reads_text(utts) -> None:
    model = build_model(tiny_config(*K1, "adapter.ctc.weight=1", "adapter.ctc.compress=true")).eval()
    frames, lengths = _batch(model, utts)
    speech, speech_lens = model.project(frames, lengths)
    assert (speech_lens <= model.projector.output_lengths(lengths)).all()
    assert len(model.generate_frames(frames, lengths, max_new_tokens=3)) == len(utts)
    assert all(isinstance(t, str) for t in model.ctc_transcribe(frames, lengths))


def test_config_rejects_ctc_settings_without_the_loss() -> None:
    with pytest.raises(ConfigError, match="adapter.ctc.compress: needs adapter.ctc.weight > 0"):
        load_config(None, ["adapter.ctc.compress=true"])
    with pytest.raises(ConfigError, match="adapter.ctc.lm_after: needs adapter.ctc.weight > 0"):
        load_config(None, ["adapter.ctc.lm_after=10"])
    with pytest.raises(ConfigError, match="adapter.ctc.lm_after: expected < train.max_steps"):
        load_config(None, ["adapter.ctc.weight=1", "adapter.ctc.lm_after=300", "train.max_steps=300"])
    with pytest.raises(ConfigError, match="adapter.ctc.weight: expected a finite float, got inf"):
        load_config(None, ["adapter.ctc.weight=.inf"])
    with pytest.raises(ConfigError, match="adapter.ctc.readout: expected one of"):
        load_config(None, ["adapter.ctc.weight=1", "adapter.ctc.readout=mean"])


def test_default_ctc_section_keeps_old_identities() -> None:
    """Runs recorded before the ctc section existed keep their legacy hash (the values below are what the
    code before it gave), which the runner adopts; any CTC setting makes a new cell."""
    base = load_config(None, [])
    assert legacy_hashes(base)[1] == "0b67647f84dbbe3bac59fbe2a45216f7c170f01033d2b1dd0c582b85eab8a81e"
    other = load_config(None, ["adapter.k=10", "llm.prompt_style=plain"])
    assert legacy_hashes(other)[1] == "baf6d65095c6200d0b423c098f3fa35ee4c79c2a23f4b7e185af38c4c19b4f9f"
    for identity in (config_hash, lambda c: legacy_hashes(c)[1]):
        assert identity(load_config(None, ["adapter.ctc.weight=1"])) != identity(base)
        assert identity(load_config(None, ["adapter.ctc.weight=0"])) == identity(base)


def test_ctc_only_steps_then_lm_steps(tmp_path: Path, libri, monkeypatch: pytest.MonkeyPatch) -> None:
    """adapter.ctc.lm_after: the first steps log the CTC loss but no LM loss or accuracy; emergence is
    computed over the steps that ran the LLM; the run finishes and decodes its test split."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    utts = sorted(libri["dev-clean"], key=lambda u: u.duration)[:4]
    write_manifest(tmp_path / "train.jsonl", utts)
    cfg = tiny_config(*K1, "adapter.ctc.weight=1", "adapter.ctc.lm_after=4", "train.max_steps=8", "train.eval_every=0",
                      "train.warmup_steps=0", "train.checkpoint_every=3", f"data.train={tmp_path / 'train.jsonl'}",
                      f"data.dev={tmp_path / 'train.jsonl'}", f"data.test={{mini: {tmp_path / 'train.jsonl'}}}",
                      "decode.max_new_tokens=5")
    result = run_training(cfg, tmp_path / "run", progress=False)
    history = LocalTracker(tmp_path / "run").history()
    series = lambda key: sorted(r["step"] for r in history if r["key"] == key)  # noqa: E731
    assert series("train/ctc_loss") == list(range(1, 9))
    assert series("train/acc") == series("train/loss") == [5, 6, 7, 8]
    assert "dev/ctc_wer" in result.metrics and "test/mini/wer" in result.metrics
