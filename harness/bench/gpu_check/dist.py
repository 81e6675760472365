"""The distributed part of :mod:`harness.bench.gpu_check.check`, one process per rank under ``torchrun``::

    torchrun --standalone --nproc_per_node 2 -m harness.bench.gpu_check.dist --shape offline-default --out dist.json

Every rank builds the same model (same seed), takes its round-robin share of one global batch, weights
its loss by its share of the batch's target tokens and sums the trainable gradients over the ranks
(:class:`harness.run.distributed.Dist`, as the trainer does), once with the LLM whole on every rank (DDP)
and once with its decoder layers sharded (FSDP2, :func:`harness.run.distributed.shard_llm`). Each rank also
runs the whole batch through an unsharded copy: the summed gradients must equal that copy's. Runs in
fp32 with TF32 off, so the comparison is about the parallel code, not about precision. Rank 0 writes
the JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from harness.run import distributed
from harness.bench.gpu_check import models as gm

GRAD_RTOL = 1e-4
"""fp32, TF32 off: summed per-rank gradients equal the whole batch's to 1e-4 (relative norm), the losses too."""


def _held(llm: torch.nn.Module) -> int:
    """Parameters this rank holds (its local shards under FSDP)."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in llm.parameters())


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double().cpu() for p in model.parameters() if p.requires_grad])


def check(parallel: str, shape: gm.Shape, device: torch.device, dist: distributed.Dist) -> dict[str, Any]:
    model = gm.build_model(shape, device).train()
    whole = gm.build_model(shape, device).train()
    for m in (model, whole):
        gm.settings(m, "ours")
        m.use_onednn_linears(False)
    if parallel == "fsdp":
        distributed.shard_llm(model.llm)
    pool = gm.synthetic_pool(shape, n=4, seed=5)
    batch = list(range(4))
    total = sum(len(model.prompt.target_ids(t)) for t in pool.texts)
    mine = dist.shard(batch)
    gm.sync(device)
    t0 = time.perf_counter()
    out = model([pool.waves[i] for i in mine], [pool.texts[i] for i in mine])
    (out["loss"] * (int(out["tokens"]) / total)).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    dist.sum_gradients(params)
    loss = dist.sum(float(out["loss"].detach()) * int(out["tokens"])) / total
    gm.sync(device)
    seconds = time.perf_counter() - t0
    ref = whole(pool.waves, pool.texts)
    ref["loss"].backward()
    ref_loss = float(ref["loss"].detach())
    g, h = _grads(model), _grads(whole)
    err = float((g - h).norm() / h.norm())
    errs = dist.merge({str(dist.rank): err})
    worst = max(errs.values())
    return {"ranks": dist.world, "step_seconds": seconds, "loss": loss, "loss_whole_batch": ref_loss,
            "grad_rel_err_per_rank": errs, "llm_params_per_rank": _held(model.llm), "llm_params": _held(whole.llm),
            "passed": worst <= GRAD_RTOL and abs(loss - ref_loss) <= GRAD_RTOL * abs(ref_loss)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="offline-default", choices=sorted(gm.SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--cpu", action="store_true", help="gloo on the CPU even where there are GPUs")
    args = ap.parse_args(argv)
    device = torch.device("cpu") if args.cpu else distributed.local_device("auto")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dist = distributed.from_env(device)
    results: dict[str, Any] = {}
    try:
        for parallel in ("ddp", "fsdp"):
            try:
                results[parallel] = check(parallel, gm.SHAPES[args.shape], device, dist)
            except Exception as e:  # noqa: BLE001 - report it, try the other path
                results[parallel] = {"passed": False, "error": f"{type(e).__name__}: {e}"}
            results[parallel]["backend"] = torch.distributed.get_backend() if dist.enabled else "none"
        if dist.is_main:
            Path(args.out).write_text(json.dumps(results, indent=1))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
