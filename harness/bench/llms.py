"""Seconds per training step of the recipe for several LLMs, measured side by side, alternating round by round.

    python -m harness.bench.llms [LLM_REF ...]      # default: SmolLM2-135M against Qwen2.5-Coder-0.5B

One step is what the trainer does (``forward_frames``, backward, gradient clipping, fused AdamW) on the
same batch of the 4 shortest real LibriSpeech utterances of ``../shared/data/librispeech-mini``, with the
encoder frames computed once. Each LLM gets 2 warm-up steps (weights packed, prompt prefix cached), then
rounds of 2 steps per LLM in turn, so a machine that gets busier or quieter affects every LLM alike.
Prints each LLM's median and minimum seconds per step and its ratio to the first one.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

DEFAULT_LLMS = ("pack:smollm2-135m-instruct", "pack:qwen2.5-coder-0.5b-instruct")


def _setup(name: str, utts: list) -> tuple:
    from harness.config import load_config
    from harness.data.audio import load_audio
    from harness.models import build_model

    model = build_model(load_config(None, [f"llm.name={name}", "train.device=cpu"])).train()
    frames, lengths = model.encode([load_audio(u.audio) for u in utts])
    params = [p for p in model.parameters() if p.requires_grad]
    return model, frames, lengths, params, torch.optim.AdamW(params, lr=1e-3, fused=True)


def _step(setup: tuple, texts: list[str]) -> float:
    model, frames, lengths, params, opt = setup
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    model.forward_frames(frames, lengths, texts)["objective"].backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    from harness.data.librispeech import librispeech_splits, read_librispeech

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("llms", nargs="*", default=list(DEFAULT_LLMS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--librispeech", default="../shared/data/librispeech-mini")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds: expected >= 1, got {args.rounds}")
    utts = sorted((u for s in librispeech_splits(args.librispeech) for u in read_librispeech(args.librispeech, s)),
                  key=lambda u: u.duration)[:4]
    texts = [u.text for u in utts]
    setups = {name: _setup(name, utts) for name in args.llms}
    for name in args.llms:
        for _ in range(2):
            _step(setups[name], texts)
    times: dict[str, list[float]] = {name: [] for name in args.llms}
    for r in range(args.rounds):
        for name in args.llms:
            times[name] += [_step(setups[name], texts) for _ in range(2)]
        print(f"round {r}: " + ", ".join(f"{n} {times[n][-2]:.2f}/{times[n][-1]:.2f} s" for n in args.llms), flush=True)
    base = statistics.median(times[args.llms[0]])
    for name in args.llms:
        med = statistics.median(times[name])
        print(f"{name}: median {med:.3f} s/step, min {min(times[name]):.3f} over {len(times[name])} steps, x{med / base:.2f}")


if __name__ == "__main__":
    from harness.cli.common import script_main

    script_main(main)  # one line per error (HARNESS_DEBUG=1: the traceback)
