"""Frozen LLM linears through oneDNN packed weights: the same numbers as F.linear, kept in step with the weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.conftest import tiny_config
from harness.models import build_model
from harness.models.fast.onednn import available, use_onednn_linears
from tests.run.test_performance_options import _assert_same, _loss_and_grads, batch  # noqa: F401  (batch is a fixture)

pytestmark = pytest.mark.skipif(not available(), reason="this PyTorch build has no oneDNN packed linear")


def _packed_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if "_packed" in m.__dict__]


@pytest.mark.parametrize("lora", [False, True])
def test_packed_weights_give_the_same_loss_and_gradients(batch, lora: bool) -> None:  # noqa: F811
    extra = ["llm.lora.enabled=true", "llm.lora.dropout=0.0"] if lora else []
    model = build_model(tiny_config(*extra))
    linears = [m for m in model.llm.modules() if type(m) is nn.Linear]
    frozen = [m for m in linears if not m.weight.requires_grad]
    assert _packed_layers(model.llm) == frozen  # every frozen linear (LM head and LoRA base layers too), no trainable one
    packed = _loss_and_grads(model, batch)
    assert all(m._packed.forward is not None and m._packed.backward is not None for m in frozen)  # both passes ran packed
    model.use_onednn_linears(False)
    assert not _packed_layers(model.llm) and not model.packs_weights
    _assert_same(packed, _loss_and_grads(model, batch), rtol=1e-4, atol=1e-6)


def test_packed_copies_follow_the_weight() -> None:
    layer = nn.Linear(24, 12).requires_grad_(False)
    x = torch.randn(5, 24, requires_grad=True)
    use_onednn_linears(layer)
    layer(x)
    first = layer._packed.forward
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place: the version changes
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert layer._packed.forward is not first
    layer.weight = nn.Parameter(torch.randn(12, 24), requires_grad=False)  # replaced: another tensor
    y = layer(x)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, layer.weight, layer.bias))
    y.sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(5, 24))  # dX = dY @ W with dY = 1


def test_layers_that_cannot_use_onednn_linears_run_plain() -> None:
    frozen, trainable = nn.Linear(8, 8).requires_grad_(False), nn.Linear(8, 8)
    assert use_onednn_linears(nn.Sequential(frozen, trainable)) == 1  # a trainable weight is left alone
    assert use_onednn_linears(frozen) == 0  # already packed
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert frozen(x).dtype == torch.bfloat16  # autocast: plain F.linear, as autocast asks
    assert frozen._packed.forward is None  # nothing was packed for that call
    double = nn.Linear(8, 8).double().requires_grad_(False)
    use_onednn_linears(double)
    assert double(x.double()).dtype == torch.float64 and double._packed.forward is None  # not fp32: plain
    assert use_onednn_linears(frozen, False) == 1 and "forward" not in frozen.__dict__


def test_packed_weights_only_on_the_cpu_and_not_under_compile() -> None:
    assert build_model(tiny_config()).packs_weights
    model = build_model(tiny_config("train.compile=true"))
    model.compile_for_training()
    assert not model.packs_weights
