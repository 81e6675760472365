"""The sections of :mod:`harness.bench.gpu_check.check`: each measures one thing, within its own deadline, and writes
what it has measured so far into a :class:`Recorder` (so a section stopped at its time limit still
leaves its finished parts behind).

- :func:`section_measure`: one model configuration, our training settings vs the reference code's
  (step time, audio seconds per second, useful FLOP/s against the bf16 matmul rate of the same process,
  CUDA peak memory), then batched vs one-by-one greedy decoding.
- :func:`section_numerics`: bf16-autocast training steps on the check's device against the same steps
  in fp32 on the CPU.
- :func:`section_compile`: ``torch.compile`` on against off.
- :func:`section_distributed`: DDP and FSDP under ``torchrun`` (NCCL on two or more GPUs, gloo on the CPU).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from harness.bench.gpu_check import models as gm
from harness.bench.gpu_check.dist import GRAD_RTOL

LOSS_RTOL = 2e-2
"""Numerics: each step's loss in bf16 autocast within 2 % of the fp32 loss."""
GRAD_COSINE_MIN = 0.99
"""Numerics: the projector's gradient in bf16 autocast points the same way as in fp32 (cosine >= 0.99)."""


class Recorder:
    """A section's results, rewritten to ``path`` (atomically) after every part."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> Any:
        self.data[key] = value
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            os.replace(tmp, self.path)
        return value

    def part(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args)`` stored under ``name``; an exception is stored under ``errors`` and the section goes on."""
        try:
            return self.put(name, fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - a failing part is a result, not the end of the check
            self.put("errors", {**self.data.get("errors", {}), name: f"{type(e).__name__}: {e}"})
            self.put("tracebacks", {**self.data.get("tracebacks", {}), name: traceback.format_exc()[-4000:]})
            return None


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.time())


def peak_memory(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    if device.type == "cuda":
        out["cuda_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return out


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def matmul(device: torch.device) -> dict[str, Any]:
    """The dense matmul rate of this process (bf16 on CUDA at 8192^2; fp32 on the CPU, best kernel)."""
    from harness.bench.bench import matmul_rate

    return matmul_rate(device, n=8192 if device.type == "cuda" else 512, seconds=1.0 if device.type == "cuda" else 0.3)


# ------------------------------------------------------------------------------------ measure


def _precision(model) -> str:
    device, dtype = model.prefix_ids.device, model.llm.get_input_embeddings().weight.dtype
    return ("bf16 autocast" if device.type == "cuda" else "no autocast") + f", LLM weights {str(dtype).removeprefix('torch.')}"


def _variant(model, pool: gm.Pool, shape: gm.Shape, variant: str, deadline: float) -> dict[str, Any]:
    """Train ``shape.warmup`` + up to ``shape.steps`` steps with one variant's settings; the timed steps' figures."""
    device = model.prefix_ids.device
    config = gm.settings(model, variant)
    cache_seconds, cache = None, None
    if variant == "ours":  # the feature cache, filled once before training (not part of the step)
        t0 = time.perf_counter()
        cache = gm.encode_pool(model, pool)
        gm.sync(device)
        cache_seconds = time.perf_counter() - t0
    reset_peak(device)
    opt = gm.optimizer(model)
    order = gm.batches(pool, variant, shape.batch_size)
    steps, flops = [], {"model": 0.0, "executed": 0.0}
    for i in range(shape.warmup + shape.steps):
        if i > shape.warmup and time.time() > deadline:
            break
        r = gm.train_step(model, opt, order[i % len(order)], pool, cache)
        if i >= shape.warmup:
            steps.append(r)
            for k, v in gm.step_flops(model, r["lengths"], r["texts"]).items():
                flops[k] += v
    seconds = sum(r["seconds"] for r in steps)
    return {"settings": config, "precision": _precision(model), "timed_steps": len(steps), "seconds_per_step": seconds / len(steps),
            "audio_sec_per_sec": sum(r["audio_seconds"] for r in steps) / seconds,
            "utterances_per_batch": statistics.mean(len(r["texts"]) for r in steps),
            "useful_flops_per_second": flops["model"] / seconds, "executed_flops_per_second": flops["executed"] / seconds,
            "losses": [r["loss"] for r in steps], "encode_pool_seconds": cache_seconds, **peak_memory(device)}


def train_compare(model, pool: gm.Pool, shape: gm.Shape, deadline: float) -> dict[str, Any]:
    """Ours vs the reference settings from the same projector weights, the matmul rate sampled around both."""
    device = model.prefix_ids.device
    start = copy.deepcopy(model.projector.state_dict())
    rates = [matmul(device)]
    model.train()
    out: dict[str, Any] = {}
    for variant, share in (("ours", 0.4), ("reference", 1.0)):
        model.projector.load_state_dict(start)
        out[variant] = _variant(model, pool, shape, variant, time.time() + share * _left(deadline))
        rates.append(matmul(device))
    ceiling = statistics.median(r["flops_per_second"] for r in rates)
    out["matmul"] = {"flops_per_second": ceiling, "dtype": rates[0]["dtype"], "n": rates[0]["n"],
                     "samples": [r["flops_per_second"] for r in rates]}
    for v in ("ours", "reference"):
        out[v]["useful_flops_fraction"] = out[v]["useful_flops_per_second"] / ceiling
        out[v]["executed_flops_fraction"] = out[v]["executed_flops_per_second"] / ceiling
    out["speedup"] = out["ours"]["audio_sec_per_sec"] / out["reference"]["audio_sec_per_sec"]
    model.projector.load_state_dict(start)
    return out


def decode_compare(model, pool: gm.Pool, shape: gm.Shape, deadline: float) -> dict[str, Any]:
    """Greedy decoding of the same utterances in one batch and one by one (each capped at its transcript's
    length + EOS); whether the transcripts are identical."""
    device = model.prefix_ids.device
    model.eval()
    gm.settings(model, "ours")
    n = min(shape.decode_utterances, len(pool.waves))
    sub = gm.Pool(pool.waves[:n], pool.texts[:n])
    frames = gm.encode_pool(model, sub)
    caps = [len(model.prompt.target_ids(t)) for t in sub.texts]
    with gm.autocast(device):
        model.generate_frames(*gm.padded(frames[:2]), max_new_tokens=caps[:2])  # warm-up
        reset_peak(device)
        gm.sync(device)
        t0 = time.perf_counter()
        batched = model.generate_frames(*gm.padded(frames), max_new_tokens=caps)
        gm.sync(device)
        t_batched = time.perf_counter() - t0
        one, t0 = [], time.perf_counter()
        for i in range(n):
            if one and time.time() > deadline:
                break
            one.extend(model.generate_frames(*gm.padded(frames[i : i + 1]), max_new_tokens=caps[i : i + 1]))
        gm.sync(device)
        t_one = time.perf_counter() - t0
    m = len(one)
    differing = [i for i in range(m) if batched[i] != one[i]]
    tokens = sum(len(h.split()) for h in batched)
    return {"utterances": n, "batch_size": n, "compared": m, "precision": _precision(model), "identical_transcripts": not differing, "differing": differing,
            "distinct_hypotheses": len(set(batched)), "batched": {"seconds": t_batched, "utterances_per_second": n / t_batched,
            "tokens_per_second": tokens / t_batched}, "one_by_one": {"seconds": t_one, "utterances_per_second": m / t_one},
            "speedup": (t_one / m) / (t_batched / n), "examples": batched[:2], **peak_memory(device)}


def section_measure(rec: Recorder, shape: gm.Shape, device: torch.device, deadline: float) -> None:
    rec.put("shape", shape.describe())
    t0 = time.perf_counter()
    model = gm.build_model(shape, device)
    gm.sync(device)
    rec.put("build_seconds", time.perf_counter() - t0)
    rec.put("params", gm.param_counts(model))
    rec.put("weights_memory", peak_memory(device))
    pool = gm.synthetic_pool(shape)
    rec.put("pool", {"utterances": len(pool.waves), "audio_seconds": sum(pool.durations)})
    rec.part("train", train_compare, model, pool, shape, time.time() + 0.6 * _left(deadline))
    decode = rec.part("decode", decode_compare, model, pool, shape, deadline)
    if "errors" in rec.data:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in rec.data["errors"].items()))
    if not decode["identical_transcripts"]:
        raise AssertionError(f"batched and one-by-one transcripts differ in {len(decode['differing'])} of {decode['compared']} "
                             f"utterances ({decode['differing']})")


# ------------------------------------------------------------------------------------ numerics


def _grad_steps(model, pool: gm.Pool, order: list[list[int]], amp: bool) -> dict[str, Any]:
    """Train on ``order``'s batches; each step's loss and the projector's flattened gradient (CPU, float64)."""
    device = model.prefix_ids.device
    model.train()
    gm.settings(model, "ours")
    model.use_onednn_linears(False)  # the plain fp32 path is the reference
    opt = gm.optimizer(model, lr=1e-3)
    params = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().reshape(-1).double().cpu() for p in params])
    losses, grads = [], []
    for batch in order:
        with gm.autocast(device, amp):
            out = model.forward([pool.waves[i] for i in batch], [pool.texts[i] for i in batch])
        out["loss"].backward()
        losses.append(float(out["loss"].detach()))
        grads.append(torch.cat([p.grad.reshape(-1).double().cpu() for p in params]))
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = torch.cat([p.detach().reshape(-1).double().cpu() for p in params])
    return {"losses": losses, "grads": grads, "update": after - before}


def section_numerics(rec: Recorder, shape: gm.Shape, device: torch.device, deadline: float, *, steps: int = 3) -> None:
    """bf16 autocast on ``device`` (CUDA; the CPU in CPU mode) against fp32 on the CPU: the same weights, seed and batches."""
    lo = shape.seconds[0]
    short = replace(shape, seconds=(lo, lo + 3.0))  # short utterances: the fp32 CPU side stays quick
    pool = gm.synthetic_pool(short, n=4 * steps, seed=3)
    order = [list(range(4 * s, 4 * s + 4)) for s in range(steps)]
    reference = gm.build_model(shape, "cpu")
    tested = copy.deepcopy(reference).to(device)
    rec.put("setup", {"steps": steps, "batch": 4, "tested": f"{device.type}, bf16 autocast", "reference": "cpu, fp32",
                      "loss_rtol": LOSS_RTOL, "grad_cosine_min": GRAD_COSINE_MIN})
    a = _grad_steps(tested, pool, order, amp=True)
    b = _grad_steps(reference, pool, order, amp=False)
    rel = [abs(x - y) / abs(y) for x, y in zip(a["losses"], b["losses"])]
    cos = [float(torch.nn.functional.cosine_similarity(g, h, dim=0)) for g, h in zip(a["grads"], b["grads"])]
    norm = [float((g - h).norm() / h.norm()) for g, h in zip(a["grads"], b["grads"])]
    update = float((a["update"] - b["update"]).norm() / b["update"].norm())
    passed = max(rel) <= LOSS_RTOL and min(cos) >= GRAD_COSINE_MIN and all(map(math.isfinite, a["losses"]))
    rec.put("result", {"losses_tested": a["losses"], "losses_reference": b["losses"], "loss_rel_diff": rel,
                       "grad_cosine": cos, "grad_rel_diff": norm, "update_rel_diff": update, "passed": passed})
    if not passed:
        raise AssertionError(f"bf16 vs fp32 outside tolerance: loss rel diff {max(rel):.3g} (<= {LOSS_RTOL}), "
                             f"gradient cosine {min(cos):.4f} (>= {GRAD_COSINE_MIN})")


# ------------------------------------------------------------------------------------ compile


def _timed_run(model, pool, cache, order, n: int, deadline: float, *, at_least: int) -> list[dict[str, Any]]:
    opt = gm.optimizer(model)
    out = []
    for i in range(n):
        if i >= at_least and time.time() > deadline:
            break
        r = gm.train_step(model, opt, order[i % len(order)], pool, cache)
        out.append({"seconds": r["seconds"], "loss": r["loss"]})
    return out


@contextlib.contextmanager
def compile_backend(backend: str):
    """``torch.compile`` with this backend while inside (``inductor``, the default, changes nothing). The reduced
    CPU mode uses ``eager``: dynamo's graph capture (graph breaks, guards, recompiles) without the minutes of
    C++ code generation that inductor takes on a small CPU (104 s for the first tiny step on 2 cores; ``aot_eager``
    39 s, ``eager`` 8 s)."""
    if backend == "inductor":
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)  # nn.Module.compile calls torch.compile too
    try:
        yield
    finally:
        torch.compile = original


def section_compile(rec: Recorder, shape: gm.Shape, device: torch.device, deadline: float, *, backend: str = "inductor") -> None:
    """Our settings eager (with the shared prefix, and without it as compiled code runs) against ``torch.compile``
    (:meth:`SpeechLLM.compile_for_training`), each from the same projector weights over the same batches."""
    rec.put("backend", backend)
    model = gm.build_model(shape, device).train()
    pool = gm.synthetic_pool(shape)
    gm.settings(model, "ours")
    cache = gm.encode_pool(model, pool)
    order = gm.batches(pool, "ours", shape.batch_size)
    start = copy.deepcopy(model.projector.state_dict())
    n = shape.warmup + shape.steps
    summary = lambda runs: {"seconds_per_step": statistics.mean(r["seconds"] for r in runs[shape.warmup:]),  # noqa: E731
                            "timed_steps": len(runs) - shape.warmup, "losses": [r["loss"] for r in runs]}
    for name, share in (("eager_shared_prefix", True), ("eager_prefix_per_row", False)):
        model.projector.load_state_dict(start)
        model.share_prefix = share
        runs = _timed_run(model, pool, cache, order, n, time.time() + 0.15 * _left(deadline), at_least=shape.warmup + 1)
        rec.put(name, summary(runs))
    model.projector.load_state_dict(start)
    model.share_prefix = True
    with compile_backend(backend):
        model.compile_for_training()  # steps the shared prefix aside: compiled code runs the prefix in every row
        runs = _timed_run(model, pool, cache, order, n, deadline, at_least=shape.warmup + 1)
    from torch._dynamo.utils import counters

    compiled = summary(runs) | {"warmup_seconds": [r["seconds"] for r in runs[: shape.warmup]],
                                "step_seconds": [r["seconds"] for r in runs[shape.warmup:]],
                                "unique_graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())}
    eager = rec.data["eager_prefix_per_row"]
    k = min(len(compiled["losses"]), len(eager["losses"]))
    compiled["loss_max_rel_diff_vs_eager"] = max(abs(a - b) / abs(b) for a, b in zip(compiled["losses"][:k], eager["losses"][:k]))
    compiled["speedup_vs_eager_prefix_per_row"] = eager["seconds_per_step"] / compiled["seconds_per_step"]
    compiled["speedup_vs_eager_shared_prefix"] = rec.data["eager_shared_prefix"]["seconds_per_step"] / compiled["seconds_per_step"]
    rec.put("compiled", compiled)


# ------------------------------------------------------------------------------------ distributed


def section_distributed(rec: Recorder, shape: gm.Shape, *, cpu: bool, timeout: float, out_dir: Path) -> None:
    """``torchrun --nproc_per_node 2 -m harness.bench.gpu_check.dist``: NCCL with two or more GPUs, else gloo on the CPU."""
    gpus = 0 if cpu else torch.cuda.device_count()
    backend = "nccl" if gpus >= 2 else "gloo"
    nproc = min(gpus, 8) if gpus >= 2 else 2
    if backend == "gloo":  # the CPU stand-in: tiny shapes, so that it costs seconds
        shape = gm.SHAPES["tiny"]
    note = (f"NCCL on {nproc} GPUs, {shape.name} shapes" if backend == "nccl" else
            f"{'CPU mode' if cpu else f'{gpus} GPU'}: NCCL needs >= 2 GPUs, not run; gloo on the CPU ({shape.name} shapes) instead")
    rec.put("setup", {"backend": backend, "nproc": nproc, "gpus": gpus, "shape": shape.name, "note": note, "grad_rtol": GRAD_RTOL})
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "dist.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "harness.bench.gpu_check.dist", "--shape", shape.name, "--out", str(result), *(["--cpu"] if backend == "gloo" else [])]
        env = {**os.environ, "PYTHONPATH": _repo_path(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        log = out_dir / "logs" / "distributed.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        rc = run_killable(cmd, env=env, timeout=timeout, log=log)
        if result.exists():
            rec.put("result", json.loads(result.read_text()))
    if rc != 0 or "result" not in rec.data:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise RuntimeError(f"torchrun exited with {rc} (log {log}): {tail}")
    failed = {k: v.get("error", "per-rank gradients differ from the whole batch's") for k, v in rec.data["result"].items()
              if not v.get("passed")}
    if failed:
        raise AssertionError("; ".join(f"{k}: {v}" for k, v in failed.items()))


def _repo_path() -> str:
    root = str(Path(__file__).resolve().parents[3])
    return os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])


def run_killable(cmd: list[str], *, env: dict[str, str], timeout: float, log: Path) -> int:
    """Run ``cmd`` in its own process group, output to ``log``; past ``timeout`` the whole group is killed
    (compile workers and torchrun's ranks included). Returns the exit status (124 on timeout)."""
    import signal

    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(Path(__file__).resolve().parents[3]))
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return 124
