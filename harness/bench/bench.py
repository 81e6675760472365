"""``harness bench``: our training and decoding measured side by side with the reference code's settings.

One command, one run, every figure measured in this run on this machine::

    harness bench                       # offline default packs, synthetic corpus, ~10 minutes on 2 CPU cores
    harness bench --steps 100 --out outputs/bench

Each part runs in a fresh child process, so its peak memory (RSS; CUDA peak on a GPU) is its own:

1. **train**: audio seconds per second of training with our defaults (native-length Whisper input,
   cached frozen-encoder frames, length-bucketed batches by audio seconds, LM head at labelled
   positions only) vs the reference code's settings (30-s padded input, encoder run at every step,
   full-vocabulary logits, batches of random lengths); both train the same number of steps from the
   same seed and are then evaluated on the same dev utterances, so the speed-up is shown next to the
   accuracy each reached. The same process measures the machine's dense matmul rate, and the
   training step's useful FLOP/s (:mod:`harness.bench.flops`, real tokens only) is reported against it.
2. **grid**: encoder time of a 4-cell grid that shares one frozen encoder, without the feature cache
   (every cell encodes its audio) and with it (the first cell fills it, all four read it).
3. **decode**: batched (16) vs one-by-one greedy decoding of the same utterances with the trained
   projector, and whether the transcripts are identical.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("harness.bench")

GRID_CELLS = 4
TARGETS = {"train_speedup": 4.0, "grid_cache_vs_one_pass": 1.1, "decode_speedup": 4.0, "useful_flops_fraction": 0.7}


@dataclass(frozen=True)
class BenchSetup:
    train: str = "data/synth/train.jsonl"
    """Training manifest (the synthetic corpus of ``harness quickstart``)."""
    dev: str = "data/synth/dev.jsonl"
    """Dev manifest: evaluation after training and the decoding part."""
    encoder: str = "pack:whisper-tiny.en"
    llm: str = "pack:smollm2-135m-instruct"
    steps: int = 30
    """Training steps per variant (the first ``warmup`` are not timed)."""
    warmup: int = 2
    batch_size: int = 4
    """Utterances per batch of the reference settings; ours uses ``batch_size`` times the mean duration in seconds."""
    eval_utterances: int = 32
    decode_utterances: int = 32
    grid_utterances: int = 120
    device: str = "auto"
    workdir: str = "outputs/bench/work"


# ------------------------------------------------------------------------------------ measuring


def matmul_rate(device: torch.device, *, n: int = 2048, seconds: float = 1.0) -> dict[str, Any]:
    """Best dense-matmul FLOP/s of this process on ``device``: bf16 on CUDA; fp32 on CPU, the faster of
    torch's matmul and oneDNN's with a packed weight (the kernel our frozen layers use, see
    :mod:`harness.models.fast.onednn`), so the ceiling is the machine's, not one library's."""
    from harness.models.fast import onednn as packed

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    kernels = {"torch": lambda: a @ b}
    if device.type == "cpu" and packed.available():
        bp = packed.pack(b.t())  # a @ b as a linear map with weight b^T
        kernels["onednn_packed"] = lambda: packed.packed_linear(a, bp)
    rates = {}
    for name, fn in kernels.items():
        fn()
        sync()
        best = 0.0
        for _ in range(3):
            reps, start = 0, time.perf_counter()
            while True:
                fn()
                reps += 1
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= seconds / 3 / len(kernels):
                    break
            best = max(best, 2 * n**3 * reps / elapsed)
        rates[name] = best
    return {"flops_per_second": max(rates.values()), "n": n, "dtype": str(dtype).removeprefix("torch."), "by_kernel": rates}


def batching_ceiling(llm: torch.nn.Module, *, batch: int = 16, reps: int = 3) -> float:
    """How much faster ``batch`` decoding steps can be than ``batch`` single ones, from this machine's
    matmul speed at the LLM's own shapes: ``batch * t(1 row) / t(batch rows)`` over every linear map of
    one decoding step (all layers and the LM head, in order, so the weights stream from memory as they
    do in decoding). A decoding step is mostly these matmuls, so this bounds the batched speed-up."""
    linears = [m for m in llm.modules() if isinstance(m, torch.nn.Linear)]
    device = linears[0].weight.device

    def timed(rows: int) -> float:
        xs = {n: torch.randn(rows, n, device=device, dtype=linears[0].weight.dtype) for n in {m.in_features for m in linears}}
        best = float("inf")
        with torch.no_grad():
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(reps):
                    for m in linears:
                        m(xs[m.in_features])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
        return best

    timed(1)
    return batch * timed(1) / timed(batch)


def _peak_memory(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}  # KiB on Linux
    if device.type == "cuda":
        out["cuda_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return out


def bench_config(setup: BenchSetup, variant: str):
    from harness.config import build_config
    from harness.data.manifest import read_manifest

    train = read_manifest(setup.train)
    mean = sum(u.duration for u in train) / max(1, len(train))
    common: dict[str, Any] = {
        "data": {"train": setup.train, "dev": setup.dev, "test": {"dev": setup.dev}, "scan": "off"},
        "encoder": {"name": setup.encoder},
        "llm": {"name": setup.llm},
        "train": {"max_steps": setup.steps, "warmup_steps": min(10, setup.steps), "eval_every": 0,
                  "eval_utterances": setup.eval_utterances, "checkpoint_every": 10**6, "device": setup.device},
        "decode": {"batch_size": 16},
    }
    if variant == "ours":
        common["encoder"].update(whisper={"input_mode": "native"}, cache=True)
        common["train"].update(batch_seconds=round(setup.batch_size * mean, 1), batch_size=setup.batch_size)
    elif variant == "reference":
        common["encoder"].update(whisper={"input_mode": "pad30"}, cache=False)
        common["train"].update(batch_size=setup.batch_size, full_vocab_logits=True)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return build_config(common)


def _step_flops(model, utts) -> dict[str, float]:
    """Model FLOPs (the useful work, prefix forward in every row) and the FLOPs our step executes."""
    from harness.data.audio import SAMPLE_RATE
    from harness.bench.flops import step_flops

    frames = torch.tensor([model.encoder.num_frames(int(round(u.duration * SAMPLE_RATE))) for u in utts])
    speech = model.projector.output_lengths(frames).tolist()
    targets = [len(model.prompt.target_ids(u.text)) for u in utts]
    P = len(model.prompt.prefix_ids)
    lin = model.projector
    args = dict(seq_lens=[P + s + len(model.prompt.suffix_ids) + t for s, t in zip(speech, targets)], labelled=targets,
                speech_tokens=speech, projector_dims=(lin.fc1.in_features, lin.fc1.out_features, lin.fc2.out_features))
    executed = dict(prefix=P, shared_prefix=True) if model.shares_prefix else dict(prefix=0)
    return {"model": step_flops(model.llm.config, prefix=P, **args).total,
            "executed": step_flops(model.llm.config, **executed, **args).total}


def _part_train(setup: BenchSetup, variant: str) -> dict[str, Any]:
    from safetensors.torch import save_file

    from harness.run.trainer import Trainer

    class RecordingTrainer(Trainer):
        """Remembers the utterances of each step, to count that step's useful FLOPs."""

        def _next_batch(self):
            batch = super()._next_batch()
            self.seen.extend(batch)
            return batch

    work = Path(setup.workdir)
    cfg = bench_config(setup, variant)
    trainer = RecordingTrainer(cfg, work / variant, progress=False)
    t0 = time.perf_counter()
    trainer.setup()
    setup_seconds = time.perf_counter() - t0
    # The reference code runs the prompt prefix in every row, through plain PyTorch matmuls.
    trainer.model.share_prefix = variant == "ours"
    trainer.model.use_onednn_linears(variant == "ours" and trainer.device.type == "cpu")
    matmul_rate(trainer.device)  # warm the matmul kernels
    trainer._order_cache = {}  # what Trainer.train() prepares before its loop
    trainer.model.train()
    times, audio, flops, rates = [], [], {"model": [], "executed": []}, []
    for i in range(setup.steps):
        trainer.seen = []
        m = trainer._train_step()
        trainer.state.step += 1
        if i >= setup.warmup:
            times.append(m["train/step_seconds"])
            audio.append(m["train/audio_sec_per_sec"] * m["train/step_seconds"])
            for kind, n in _step_flops(trainer.model, trainer.seen).items():
                flops[kind].append(n)
            # The machine's matmul rate, sampled between the steps: a shared machine's speed drifts, and
            # the ratio must compare the steps with the rate of the same minutes.
            rates.append(matmul_rate(trainer.device, seconds=0.3))
    t0 = time.perf_counter()
    dev = {k.removeprefix("dev/"): v for k, v in trainer._evaluate(record=False).items()}
    eval_seconds = time.perf_counter() - t0
    save_file({k: v.contiguous().cpu() for k, v in trainer.model.trainable_state_dict().items()},
              str(work / f"{variant}.safetensors"))
    seconds = sum(times)
    samples = sorted(r["flops_per_second"] for r in rates)
    rate = {"flops_per_second": statistics.median(samples), "n": rates[0]["n"], "dtype": rates[0]["dtype"],
            "samples": len(samples), "min": samples[0], "max": samples[-1],
            "by_kernel": {k: statistics.median(r["by_kernel"][k] for r in rates) for k in rates[0]["by_kernel"]}}
    return {
        "variant": variant,
        "config": {k: v for k, v in asdict(cfg.train).items() if k in ("batch_size", "batch_seconds", "full_vocab_logits")}
        | {"input_mode": cfg.encoder.whisper.input_mode, "cache": cfg.encoder.cache, "share_prefix": trainer.model.shares_prefix,
           "packed_weights": trainer.model.packs_weights},
        "timed_steps": len(times),
        "seconds_per_step": seconds / len(times),
        "audio_sec_per_sec": sum(audio) / seconds,
        "matmul": rate,
        "useful_flops_per_second": sum(flops["model"]) / seconds,
        "useful_flops_fraction": sum(flops["model"]) / seconds / rate["flops_per_second"],
        "executed_flops_per_second": sum(flops["executed"]) / seconds,
        "executed_flops_fraction": sum(flops["executed"]) / seconds / rate["flops_per_second"],
        "setup_seconds": setup_seconds,
        "dev_after_steps": dev,
        "eval_seconds": eval_seconds,
        **_peak_memory(trainer.device),
    }


def _part_grid(setup: BenchSetup) -> dict[str, Any]:
    from harness.config import build_config
    from harness.data.audio import load_audio
    from harness.data.manifest import read_manifest
    from harness.run.distributed import local_device
    from harness.run.features import FeatureCache, encoder_batch_seconds, encoder_batches
    from harness.models import build_encoder

    device = local_device(setup.device)
    cfg = build_config({"encoder": {"name": setup.encoder}})
    encoder = build_encoder(cfg).to(device).eval()
    utts = read_manifest(setup.train)[: setup.grid_utterances]
    # Both ways encode in the same batches: the comparison is about caching, not batching.
    batches = encoder_batches(utts, encoder_batch_seconds(device))

    with torch.no_grad():
        t0 = time.perf_counter()
        for b in batches:  # what every cell pays without the cache (per epoch)
            encoder([load_audio(u.audio) for u in b])
        one_pass = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(dir=setup.workdir) as root:
        t0 = time.perf_counter()
        lookups = []  # per cell: finding which frames are cached (the first cell hashes the audio)
        for _ in range(GRID_CELLS):  # each cell: open the cache, fill what is missing, read its frames
            cache = FeatureCache(encoder, reference=setup.encoder, root=root)
            t1 = time.perf_counter()
            cache.missing(utts)
            lookups.append({"seconds": time.perf_counter() - t1, "hashed": cache.digests.hashed})
            cache.fill(utts, progress=False)
            for b in batches:
                cache.load(b, device=device)
        with_cache = time.perf_counter() - t0
    return {
        "cells": GRID_CELLS,
        "utterances": len(utts),
        "audio_seconds": sum(u.duration for u in utts),
        "one_pass_seconds": one_pass,
        "without_cache_seconds": GRID_CELLS * one_pass,
        "with_cache_seconds": with_cache,
        "with_cache_vs_one_pass": with_cache / one_pass,
        "lookups": lookups,
        **_peak_memory(device),
    }


def _part_decode(setup: BenchSetup) -> dict[str, Any]:
    from safetensors.torch import load_file

    from harness.config import DecodeConfig
    from harness.data.manifest import read_manifest
    from harness.run.decode import transcribe
    from harness.run.features import FeatureCache
    from harness.models import build_model
    from harness.cache import cache_dir
    from harness.run.trainer import resolve_device

    cfg = bench_config(setup, "ours")
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, device=device).eval()
    model.load_state_dict(load_file(str(Path(setup.workdir) / "ours.safetensors"), device=str(device)), strict=False)
    features = FeatureCache(model.encoder, reference=cfg.encoder.name, root=cache_dir())
    utts = read_manifest(setup.dev)[: setup.decode_utterances]
    features.fill(utts, progress=False)
    dc = cfg.decode
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        transcribe(model, utts[:2], DecodeConfig(**{**asdict(dc), "batch_size": 2}), progress=False, features=features)  # warm-up
        out = {}
        for name, bs in (("batched", 16), ("one_by_one", 1)):
            t0 = time.perf_counter()
            hyps = transcribe(model, utts, DecodeConfig(**{**asdict(dc), "batch_size": bs}), progress=False, features=features)
            seconds = time.perf_counter() - t0
            tokens = sum(len(model.prompt.tokenizer(h, add_special_tokens=False).input_ids) for h in hyps)
            out[name] = {"seconds": seconds, "utterances_per_second": len(utts) / seconds,
                         "tokens_per_second": tokens / seconds, "hypotheses": hyps}
    same = out["batched"]["hypotheses"] == out["one_by_one"]["hypotheses"]
    ceiling = batching_ceiling(model.llm, batch=16)
    return {
        "utterances": len(utts),
        "batch_size": 16,
        "batched": {k: v for k, v in out["batched"].items() if k != "hypotheses"},
        "one_by_one": {k: v for k, v in out["one_by_one"].items() if k != "hypotheses"},
        "speedup": out["one_by_one"]["seconds"] / out["batched"]["seconds"],
        "matmul_batching_ceiling": ceiling,
        "identical_transcripts": same,
        "differing": [i for i, (a, b) in enumerate(zip(out["batched"]["hypotheses"], out["one_by_one"]["hypotheses"])) if a != b],
        **_peak_memory(device),
    }


def _child(part: str, setup: BenchSetup, *args: str) -> dict[str, Any]:
    """Run one part in a fresh process (its own peak memory; nothing cached in RAM between parts)."""
    fn = {"train": _part_train, "grid": _part_grid, "decode": _part_decode}[part]
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, setup, *args).result()


# ------------------------------------------------------------------------------------ the run


def run_bench(setup: BenchSetup, *, out: str | Path = "outputs/bench") -> dict[str, Any]:
    """Run every part and write ``bench.json`` and ``bench.md`` under ``out``; returns the results.

    Example (tiny models, for a quick look; the real figures need the offline packs)::

        >>> setup = BenchSetup(encoder="tiny:whisper", llm="tiny:llama", steps=3, warmup=1)  # doctest: +SKIP
        >>> run_bench(setup)["train"]["speedup"]  # doctest: +SKIP
    """
    out = Path(out)
    Path(setup.workdir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"setup": asdict(setup), "machine": _machine()}
    ours = _child("train", setup, "ours")
    log.info("train, ours: %.2f s/step", ours["seconds_per_step"])
    reference = _child("train", setup, "reference")
    log.info("train, reference settings: %.2f s/step", reference["seconds_per_step"])
    results["train"] = {"ours": ours, "reference": reference,
                        "speedup": ours["audio_sec_per_sec"] / reference["audio_sec_per_sec"]}
    results["grid"] = _child("grid", setup)
    results["decode"] = _child("decode", setup)
    results["wall_seconds"] = time.perf_counter() - started
    results["targets"] = _targets(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    (out / "bench.md").write_text(table(results))
    return results


def _machine() -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    measured = {
        "train_speedup": r["train"]["speedup"],
        "grid_cache_vs_one_pass": r["grid"]["with_cache_vs_one_pass"],
        "decode_speedup": r["decode"]["speedup"],
        "useful_flops_fraction": r["train"]["ours"]["useful_flops_fraction"],
    }
    at_most = {"grid_cache_vs_one_pass"}
    return {k: {"measured": v, "target": TARGETS[k], "met": v <= TARGETS[k] if k in at_most else v >= TARGETS[k]}
            for k, v in measured.items()}


def table(r: dict[str, Any]) -> str:
    """The short Markdown table of a bench result."""
    t, g, d = r["train"], r["grid"], r["decode"]
    o, ref = t["ours"], t["reference"]
    gf = lambda x: f"{x / 1e9:.1f}"  # noqa: E731
    mem = lambda p: f"{p['peak_rss_gb']:.2f} GB" + (f" (CUDA {p['cuda_peak_gb']:.2f} GB)" if "cuda_peak_gb" in p else "")  # noqa: E731
    ok = {k: ("met" if v["met"] else "NOT met") for k, v in r["targets"].items()}
    if "lookups" in g:
        first, later = g["lookups"][0]["seconds"], statistics.mean(c["seconds"] for c in g["lookups"][1:])
    rows = [
        "| measure | ours | baseline | ratio | target |",
        "|---|---|---|---|---|",
        f"| training, audio s per s ({o['timed_steps']} timed steps) | {o['audio_sec_per_sec']:.2f} | {ref['audio_sec_per_sec']:.2f} (reference settings) "
        f"| {t['speedup']:.2f}x | >= 4x: {ok['train_speedup']} |",
        f"| training, s per step | {o['seconds_per_step']:.2f} | {ref['seconds_per_step']:.2f} | | |",
        f"| dev loss / acc / WER after {r['setup']['steps']} steps | {o['dev_after_steps']['loss']:.3f} / {o['dev_after_steps']['acc']:.3f} / "
        f"{100 * o['dev_after_steps']['wer']:.1f}% | {ref['dev_after_steps']['loss']:.3f} / {ref['dev_after_steps']['acc']:.3f} / "
        f"{100 * ref['dev_after_steps']['wer']:.1f}% | | |",
        f"| training step, useful (model) GFLOP/s vs matmul GFLOP/s ({o['matmul']['dtype']}, best kernel) | {gf(o['useful_flops_per_second'])} | "
        f"{gf(o['matmul']['flops_per_second'])} | {100 * o['useful_flops_fraction']:.0f}% | >= 70%: {ok['useful_flops_fraction']} |",
        f"| training step, executed GFLOP/s (prompt prefix once per batch) vs matmul GFLOP/s | {gf(o['executed_flops_per_second'])} | "
        f"{gf(o['matmul']['flops_per_second'])} | {100 * o['executed_flops_fraction']:.0f}% | |",
        f"| encoder time, {g['cells']}-cell grid, {g['utterances']} utterances (s) | {g['with_cache_seconds']:.1f} (cache) | "
        f"{g['without_cache_seconds']:.1f} (no cache); one pass {g['one_pass_seconds']:.1f} | {g['with_cache_vs_one_pass']:.2f}x one pass | <= 1.1x: {ok['grid_cache_vs_one_pass']} |",
        *([f"| finding cached frames per cell, {g['utterances']} files (s) | {later:.3f} (digest index, cells 2-{g['cells']}) | "
           f"{first:.3f} (cell 1 hashes the audio) | {first / later:.0f}x | |"] if "lookups" in g else []),
        f"| greedy decoding, {d['utterances']} utterances (utt/s) | {d['batched']['utterances_per_second']:.2f} (batch {d['batch_size']}) | "
        f"{d['one_by_one']['utterances_per_second']:.2f} (one by one) | {d['speedup']:.2f}x, transcripts "
        f"{'identical' if d['identical_transcripts'] else 'DIFFER'} | >= 4x: {ok['decode_speedup']} |",
        f"| matmul speed-up of 16 rows over 1 at the LLM's shapes, all layers (bounds batched decoding) | | | "
        f"{d['matmul_batching_ceiling']:.2f}x | |",
        f"| peak memory (RSS) | {mem(o)} | {mem(ref)} | | |",
    ]
    m = r["machine"]
    where = m.get("cuda_device") or f"{m['cpu']} CPU, {m['torch_threads']} threads"
    return "\n".join(rows) + f"\n\nMeasured on {where}, torch {m['torch']}, in {r['wall_seconds'] / 60:.1f} min.\n"
