"""Frozen linear layers on the CPU through oneDNN, with their weights packed once.

PyTorch's default CPU matmul multiplies by the plain row-major weight every time. oneDNN (bundled
with PyTorch's CPU build) can reorder a weight once into the blocked layout its kernels stream
best, and a frozen weight never changes, so the reorder is paid once. Measured on the project's
2-core CPU (fp32 GFLOP/s over all 30 layers of SmolLM2-135M's shapes, weights streaming from
memory as in a real pass; ``x @ W.T`` with ``M`` rows; a one-off loop over the shapes while this was
built)::

    rows M                       1     16     60    300    600
    torch (MKL, plain weight)    6     70    133    180    182
    oneDNN, packed weight       10    124    186    211    213

and a 2048 x 2048 matmul runs at 178 (MKL) against 216 (oneDNN packed); ``harness bench`` measures
both in every run. A training step's forward and backward of the offline default is 1.06-1.13x
faster than through ``F.linear`` (``python -m harness.bench.levers``), and the matmuls of a 16-row
decoding step took 37 ms instead of 76 ms.

Every frozen ``nn.Linear`` of the LLM (the LoRA base layers too; the LM head included) keeps its
weight as it is (state_dict, LoRA and FSDP see the plain tensor) and gets two packed copies: one
for the forward pass and, made on the first backward, one of the transposed weight for the input
gradient (``dX = dY @ W``), which is all a frozen layer's backward computes. The copies are remade
when the weight changes in place or is replaced. The layer falls back to ``F.linear`` off the CPU,
under autocast, for non-fp32 tensors, for trainable weights and when oneDNN is missing.

The cost is memory: up to two more copies of the frozen linear weights (0.54 GB each for
SmolLM2-135M; decoding alone makes only the forward one).
"""
from __future__ import annotations

import functools
import types

import torch
import torch.nn as nn
import torch.nn.functional as F


@functools.cache
def available() -> bool:
    """Whether this PyTorch build has oneDNN's packed linear (and it computes a matmul correctly)."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None:
        return False
    try:
        w, x = torch.randn(8, 4), torch.randn(3, 4)
        y = ops._linear_pointwise(x, ops._reorder_linear_weight(w, None), None, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return torch.allclose(y, x @ w.T, atol=1e-5)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) reordered for :func:`packed_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with a weight from :func:`pack`; ``x`` is ``..., in``."""
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")
    return y.reshape(*x.shape[:-1], y.shape[-1])


class _Packed:
    """The packed copies of one layer's weight, remade when the weight changes."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.forward: torch.Tensor | None = None
        self.backward: torch.Tensor | None = None

    def get(self, weight: torch.Tensor, which: str) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        if key != self.key:
            self.key, self.forward, self.backward = key, None, None
        if which == "forward" and self.forward is None:
            self.forward = pack(weight)
        if which == "backward" and self.backward is None:
            self.backward = pack(weight.detach().t())  # (in, out): dX = dY @ W as a linear map of dY
        return getattr(self, which)


class _FrozenLinear(torch.autograd.Function):
    """``y = x W^T + b`` with a frozen ``W`` (and ``b``): the backward gives ``x`` its gradient only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
        ctx.layer = layer
        return packed_linear(x, layer._packed.get(layer.weight, "forward"), layer.bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layer = ctx.layer
        return packed_linear(grad.contiguous(), layer._packed.get(layer.weight, "backward")), None


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    usable = (
        x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
        and not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
        and not torch.is_autocast_enabled("cpu")
    )
    if not usable:
        return F.linear(x, self.weight, self.bias)
    return _FrozenLinear.apply(x, self)


def use_onednn_linears(module: nn.Module, enabled: bool = True) -> int:
    """Route the frozen ``nn.Linear`` layers under ``module`` through packed weights (or back to
    ``F.linear`` with ``enabled=False``, dropping the packed copies). Returns how many layers changed.

    Example::

        >>> lin = nn.Linear(16, 8).requires_grad_(False)
        >>> x = torch.randn(4, 16)
        >>> plain = lin(x)
        >>> use_onednn_linears(lin) == int(available())
        True
        >>> torch.allclose(lin(x), plain, atol=1e-5)
        True
    """
    enabled = enabled and available()
    changed = 0
    for layer in module.modules():
        if type(layer) is not nn.Linear or layer.weight.requires_grad:
            continue
        if enabled and "_packed" not in layer.__dict__:
            layer.__dict__["_packed"] = _Packed()
            layer.forward = types.MethodType(_forward, layer)
        elif not enabled and "_packed" in layer.__dict__:
            del layer.__dict__["_packed"], layer.__dict__["forward"]
        else:
            continue
        changed += 1
    return changed
