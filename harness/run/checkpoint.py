"""A run's checkpoint on disk: trainable weights, optimizer and scheduler state, RNG state, data position.

A checkpoint is a folder ``<out_dir>/checkpoint`` holding ``trainable.safetensors`` (the trainable weights only)
and ``state.pt`` (everything else, loaded with ``weights_only=True``). It is written to ``checkpoint.tmp`` and
renamed into place, the previous one kept as ``checkpoint.old`` until the rename is done: a crash while writing
leaves a readable checkpoint, and :func:`load` falls back to ``checkpoint.old``.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "trainable.safetensors"
STATE = "state.pt"


class CheckpointError(RuntimeError):
    """A run's checkpoint exists but cannot be read (names the file)."""


def trained_weights(run_dir: str | Path) -> Path:
    """The weights a run folder holds: the finished run's ``trainable.safetensors``, else its latest
    checkpoint's. ``FileNotFoundError`` (naming the folder) when the run has not trained yet."""
    for path in (Path(run_dir) / WEIGHTS, Path(run_dir) / "checkpoint" / WEIGHTS):
        if path.exists():
            return path
    raise FileNotFoundError(f"{run_dir}: no trained weights ({WEIGHTS}) found; has the run started?")


def contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: what safetensors can write."""
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def rng_state() -> dict[str, Any]:
    """Every random generator a training step draws from."""
    return {
        "torch_rng": torch.random.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": random.getstate(),
    }


def restore_rng(blob: dict[str, Any]) -> None:
    torch.random.set_rng_state(blob["torch_rng"].cpu())
    if blob["cuda_rng"]:
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    random.setstate(blob["python_rng"])


def save(out_dir: Path, weights: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write ``weights`` and ``state`` as ``out_dir/checkpoint``, atomically (see the module docstring)."""
    tmp, final, old = out_dir / "checkpoint.tmp", out_dir / "checkpoint", out_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(contiguous(weights), str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load(out_dir: Path, device: torch.device | str) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(folder, weights, state)`` of the newest complete checkpoint under ``out_dir``, or None if there is none."""
    ckpt = out_dir / "checkpoint"
    if not ckpt.exists():
        ckpt = out_dir / "checkpoint.old"
    if not (ckpt / STATE).exists():
        return None
    hint = f"remove {ckpt} to train this run from step 0"
    try:
        weights = load_file(str(ckpt / WEIGHTS), device=str(device))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"checkpoint file {ckpt / WEIGHTS} is unreadable ({e}); {hint}") from e
    try:
        state = torch.load(ckpt / STATE, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, refused object
        raise CheckpointError(f"checkpoint file {ckpt / STATE} is unreadable ({e}); {hint}") from e
    return ckpt, weights, state
