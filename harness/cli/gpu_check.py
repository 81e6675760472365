"""``harness gpu-check``: the click command of :mod:`harness.bench.gpu_check.check` (registered in :mod:`harness.cli`).

On a GPU machine without the ``harness`` entry point, run the module itself from the repository root:
``python -m harness.bench.gpu_check.check --out $OUT``; both take the same options.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.common import POSITIVE_SECONDS, HarnessError


def _section_names(ctx, param, value: str | None) -> list[str] | None:
    """``--sections a,b``: each a section (``measure:tiny``) or a kind (``measure``) of one of the plans."""
    from harness.bench.gpu_check.check import CPU_PLAN, GPU_PLAN

    if value is None:
        return None
    names = [s.strip() for s in value.split(",") if s.strip()]
    valid = sorted({n for n, _ in GPU_PLAN + CPU_PLAN} | {n.split(":")[0] for n, _ in GPU_PLAN + CPU_PLAN})
    unknown = [n for n in names if n not in valid]
    if not names or unknown:
        raise click.BadParameter(f"{value!r}: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                                 f"valid: {', '.join(valid)}", ctx=ctx, param=param)
    return names


@click.command("gpu-check")
@click.option("--out", default="outputs/gpu-check", show_default=True, help="Folder for gpu_check.json and gpu_check.md.")
@click.option("--cpu", is_flag=True, default=None, help="Reduced CPU mode: tiny shapes, about a minute (automatic without CUDA).")
@click.option("--budget-s", type=POSITIVE_SECONDS, default=None,
              help="Time (> 0 s) for the whole check (default: 450 s on a GPU, 300 s on the CPU).")
@click.option("--sections", default=None, callback=_section_names,
              help="Comma-separated sections or kinds (measure, numerics, compile, distributed).")
@click.option("--isolate/--no-isolate", default=None, help="Each section in its own process (default: yes on a GPU, no on the CPU).")
@click.option("--compile-backend", default=None, help="torch.compile backend (default: inductor on a GPU, eager on the CPU).")
def gpu_check_command(out: str, cpu: bool | None, budget_s: float | None, sections: list[str] | None,
                      isolate: bool | None, compile_backend: str | None) -> None:
    """Prove the CUDA path in one run: real shapes with random weights (offline default and the paper's 7B
    headline), ours vs reference training speed, useful FLOP/s vs the bf16 matmul rate, CUDA peak memory,
    batched vs one-by-one decoding, bf16 vs fp32 numerics, torch.compile, DDP/FSDP over NCCL."""
    from harness.bench.gpu_check.check import run_check

    results = run_check(out, cpu=cpu or None, budget_s=budget_s, sections=sections, isolate=isolate,
                        compile_backend=compile_backend)
    if not results["plan"]:
        raise HarnessError(f"--sections {','.join(sections or [])}: no section of the {results['mode']} plan matches; "
                           f"nothing was checked")
    click.echo((Path(out) / "gpu_check.md").read_text())
    sys.exit(0 if results["summary"]["all_ok"] else 1)
