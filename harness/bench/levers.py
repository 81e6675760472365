"""What each of our training-step levers is worth, measured side by side on the same batches.

``harness bench`` compares our whole set of settings with the reference code's; this script turns
the levers off one at a time, on the bench's corpus and offline default models, so each one's share
is measured in one process, with the variants alternating round by round (a shared machine's speed
drifts; alternating spreads the drift over all of them)::

    python -m harness.bench.levers                # ~3 min on 2 CPU cores
    python -m harness.bench.levers --rounds 10 --batches 8

Levers: the prompt prefix shared as a KV cache (off: the prefix runs in every row), the frozen
linears through oneDNN with packed weights (off: ``F.linear``), fused AdamW (off: PyTorch's default
implementation). Each training variant runs forward and backward over the same batches of cached
encoder frames; the optimizer variants step the projector's parameters with the same gradients.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from harness.bench.bench import BenchSetup, bench_config


def _train_variants(setup: BenchSetup, *, batches: int, rounds: int) -> tuple[dict[str, float], list[torch.nn.Parameter]]:
    from harness.run.decode import speech_frames
    from harness.run.trainer import Trainer

    trainer = Trainer(bench_config(setup, "ours"), Path(setup.workdir) / "levers", progress=False)
    trainer.setup()
    trainer._order_cache = {}  # what Trainer.train() prepares before its loop
    model = trainer.model.train()
    data = [(speech_frames(model, b, trainer.features), [u.text for u in b]) for b in (trainer._next_batch() for _ in range(batches))]
    cpu = trainer.device.type == "cpu"
    variants = {
        "all levers on": dict(share_prefix=True, packed=cpu),
        "prompt prefix run in every row": dict(share_prefix=False, packed=cpu),
        "frozen linears through F.linear": dict(share_prefix=True, packed=False),
    }

    def run(share_prefix: bool, packed: bool) -> float:
        model.share_prefix = share_prefix
        model.use_onednn_linears(packed)
        start = time.perf_counter()
        for (frames, lengths), texts in data:
            model.forward_frames(frames, lengths, texts)["loss"].backward()
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, v in variants.items():  # warm-up: packs the weights, keeps the prefix
        run(**v)
    for _ in range(rounds):
        for name, v in variants.items():
            times[name].append(run(**v) / len(data))
    params = [p for p in model.parameters() if p.requires_grad]
    return {name: statistics.median(t) for name, t in times.items()}, params


def _optimizer_variants(params: list[torch.nn.Parameter], *, steps: int = 50, rounds: int = 5) -> dict[str, float]:
    for p in params:
        p.grad = torch.randn_like(p)
    opts = {"fused AdamW": torch.optim.AdamW(params, lr=1e-4, fused=True),
            "AdamW, PyTorch's default implementation": torch.optim.AdamW(params, lr=1e-4)}
    times: dict[str, list[float]] = {name: [] for name in opts}
    for opt in opts.values():
        opt.step()
    for _ in range(rounds):
        for name, opt in opts.items():
            start = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default=BenchSetup.train, help="training manifest (default: %(default)s)")
    ap.add_argument("--encoder", default=BenchSetup.encoder, help="default: %(default)s")
    ap.add_argument("--llm", default=BenchSetup.llm, help="default: %(default)s")
    ap.add_argument("--device", default="auto", help="default: %(default)s")
    ap.add_argument("--batches", type=int, default=6, help="batches per timed pass (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=6, help="timed passes per variant, alternating (default: %(default)s)")
    ap.add_argument("--workdir", default="outputs/bench/work", help="run folder (default: %(default)s)")
    args = ap.parse_args(argv)
    if not Path(args.train).is_file():
        ap.error(f"--train: manifest {args.train} not found (make it with `harness quickstart --study studies/mini_llm.yaml` or `harness bench`)")

    setup = BenchSetup(train=args.train, dev=args.train, encoder=args.encoder, llm=args.llm, device=args.device,
                       workdir=args.workdir)
    step, params = _train_variants(setup, batches=args.batches, rounds=args.rounds)
    opt = _optimizer_variants(params)
    base = step["all levers on"]
    print(f"| training forward+backward, median s per batch ({args.batches} batches x {args.rounds} rounds) | s | vs all on |")
    print("|---|---|---|")
    for name, t in step.items():
        print(f"| {name} | {t:.3f} | {t / base:.2f}x |")
    fused = opt["fused AdamW"]
    print(f"\n| optimizer step, projector ({sum(p.numel() for p in params) / 1e6:.1f}M parameters) | ms | vs fused |")
    print("|---|---|---|")
    for name, t in opt.items():
        print(f"| {name} | {1e3 * t:.2f} | {t / fused:.2f}x |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    from harness.cli.common import script_main

    script_main(main)  # one line per error (HARNESS_DEBUG=1: the traceback)
