"""Speed options change the cost of a step, never what it computes: same loss, same gradients."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import audio, tiny_config
from harness.data.batching import batches_shortest_first
from harness.models import build_model


@pytest.fixture(scope="module")
def batch(utts_by_duration) -> list:
    return [utts_by_duration[i] for i in (0, 3, 7)]


def _loss_and_grads(model, utts) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    frames, lengths = model.encode([audio(u) for u in utts])
    out = model.forward_frames(frames, lengths, [u.text for u in utts])
    out["loss"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(out["loss"].detach()), grads


def _assert_same(a: tuple[float, dict], b: tuple[float, dict], *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert a[0] == pytest.approx(b[0], rel=rtol)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=rtol, atol=atol, msg=name)


def test_label_position_head_equals_the_full_vocabulary_head(batch) -> None:
    model = build_model(tiny_config())
    labels_only = _loss_and_grads(model, batch)
    model.full_vocab_logits = True
    full = _loss_and_grads(model, batch)
    _assert_same(labels_only, full)


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_prefix_gives_the_same_loss_and_gradients(batch, lora: bool) -> None:
    """The prefix run once for the batch (forward only with a frozen LLM; with gradients under LoRA)
    computes what running it in every row computes, with fewer token rows through the layers."""
    extra = ["llm.lora.enabled=true", "llm.lora.dropout=0.0"] if lora else []
    model = build_model(tiny_config(*extra))
    rows: list[int] = []
    model.llm.get_decoder().layers[0].register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[:2].numel()))
    assert model.shares_prefix
    shared = _loss_and_grads(model, batch)
    shared_rows = sum(rows)
    rows.clear()
    model.share_prefix = False
    whole = _loss_and_grads(model, batch)
    _assert_same(shared, whole)
    P = len(model.prompt.prefix_ids)
    assert shared_rows == sum(rows) - (len(batch) - 1) * P  # the prefix ran once instead of once per row
    if lora:
        assert any("lora" in name for name in shared[1])


def test_a_frozen_llms_prefix_runs_once_until_its_weights_change(batch) -> None:
    model = build_model(tiny_config())
    prefix_runs: list[int] = []
    model.llm.get_decoder().layers[0].register_forward_pre_hook(
        lambda _, args: prefix_runs.append(1) if args[0].shape[0] == 1 else None)  # the prefix runs as one row
    first = _loss_and_grads(model, batch)
    assert _loss_and_grads(model, batch)[0] == first[0] and len(prefix_runs) == 1  # kept across steps
    with torch.no_grad():
        model.llm.get_decoder().layers[0].mlp.down_proj.weight.mul_(1.5)
    changed = _loss_and_grads(model, batch)
    assert len(prefix_runs) == 2 and changed[0] != first[0]  # recomputed with the new weights ...
    model.share_prefix = False
    _assert_same(changed, _loss_and_grads(model, batch))  # ... exactly as whole rows compute them
    model.share_prefix = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _loss_and_grads(model, batch)
    assert len(prefix_runs) == 3  # another precision: other keys and values


def test_no_shared_prefix_under_gradient_checkpointing() -> None:
    """transformers drops a layer's cache while checkpointing it, so those runs keep whole rows."""
    assert not build_model(tiny_config("train.gradient_checkpointing=true")).shares_prefix


def test_full_vocab_logits_is_a_config_switch() -> None:
    assert build_model(tiny_config("train.full_vocab_logits=true")).full_vocab_logits is True
    assert build_model(tiny_config()).full_vocab_logits is False


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(batch, lora: bool) -> None:
    extra = ["llm.lora.enabled=true", "llm.lora.dropout=0.0"] if lora else []
    plain = _loss_and_grads(build_model(tiny_config(*extra)), batch)
    model = build_model(tiny_config(*extra, "train.gradient_checkpointing=true"))
    layer = model.llm.get_decoder().layers[0]
    calls = []
    # HF checkpoints the layer's forward (its own hooks stay outside); a child module sees the recompute.
    layer.mlp.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    model.train()
    assert layer.training
    assert model.llm.training is lora  # a frozen LLM stays in eval mode (no dropout) while its layers checkpoint
    checkpointed = _loss_and_grads(model, batch)
    _assert_same(plain, checkpointed)
    # Once in the forward pass, once more when backward recomputes the layer.
    assert len(calls) == 2


def test_compiled_training_forward_matches_eager(batch) -> None:
    eager = _loss_and_grads(build_model(tiny_config()), batch)
    model = build_model(tiny_config("train.compile=true"))
    model.compile_for_training()
    compiled = _loss_and_grads(model, batch)
    _assert_same(eager, compiled, rtol=1e-4, atol=1e-5)
    # The compiled copy is not part of the module tree: checkpoints keep their keys.
    assert not any("_orig_mod" in k for k in model.state_dict())


def test_bf16_autocast_is_close_to_fp32(tmp_path: Path, batch) -> None:
    from harness.run.trainer import Trainer

    model = build_model(tiny_config())
    fp32 = _loss_and_grads(model, batch)[0]
    trainer = Trainer(tiny_config("train.precision=bf16", "train.device=cpu"), tmp_path)
    with trainer._autocast():
        bf16 = _loss_and_grads(model, batch)[0]
    assert bf16 != fp32  # it really ran in bf16 ...
    assert bf16 == pytest.approx(fp32, rel=0.05)  # ... and bf16 keeps about 3 significant digits
    # auto on CPU means fp32: no autocast.
    assert not Trainer(tiny_config("train.device=cpu"), tmp_path / "b")._autocast()._enabled


def test_short_first_curriculum_orders_the_first_epoch_by_duration(utts_by_duration) -> None:
    utts = list(reversed(utts_by_duration))
    by_count = batches_shortest_first(utts, batch_size=4)
    flat = [i for b in by_count for i in b]
    assert sorted(flat) == list(range(len(utts)))
    assert [utts[i].duration for i in flat] == sorted(u.duration for u in utts)
    by_seconds = batches_shortest_first(utts, max_seconds=12.0)
    assert [i for b in by_seconds for i in b] == flat
    assert all(sum(utts[i].duration for i in b) <= 12.0 or len(b) == 1 for b in by_seconds)
    with pytest.raises(ValueError, match="exactly one"):
        batches_shortest_first(utts)
