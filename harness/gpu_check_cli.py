"""``harness gpu-check``: the click command of :mod:`harness.gpu_check` (registered in :mod:`harness.cli`).

On a GPU machine without the ``harness`` entry point, run the module itself from the repository root:
``python -m harness.gpu_check --out $OUT``; both take the same options.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("gpu-check")
@click.option("--out", default="outputs/gpu-check", show_default=True, help="Folder for gpu_check.json and gpu_check.md.")
@click.option("--cpu", is_flag=True, default=None, help="Reduced CPU mode: tiny shapes, about a minute (automatic without CUDA).")
@click.option("--budget-s", type=float, default=None, help="Time for the whole check (default: 450 s on a GPU, 300 s on the CPU).")
@click.option("--sections", default=None, help="Comma-separated sections or kinds (measure, numerics, compile, distributed).")
@click.option("--isolate/--no-isolate", default=None, help="Each section in its own process (default: yes on a GPU, no on the CPU).")
@click.option("--compile-backend", default=None, help="torch.compile backend (default: inductor on a GPU, eager on the CPU).")
def gpu_check_command(out: str, cpu: bool | None, budget_s: float | None, sections: str | None, isolate: bool | None,
                      compile_backend: str | None) -> None:
    """Prove the CUDA path in one run: real shapes with random weights (offline default and the paper's 7B
    headline), ours vs reference training speed, useful FLOP/s vs the bf16 matmul rate, CUDA peak memory,
    batched vs one-by-one decoding, bf16 vs fp32 numerics, torch.compile, DDP/FSDP over NCCL."""
    from harness.gpu_check import run_check

    names = [s.strip() for s in sections.split(",")] if sections else None
    results = run_check(out, cpu=cpu or None, budget_s=budget_s, sections=names, isolate=isolate, compile_backend=compile_backend)
    click.echo((Path(out) / "gpu_check.md").read_text())
    sys.exit(0 if results["summary"]["all_ok"] else 1)
