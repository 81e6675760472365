"""Capability emergence: the step at which teacher-forced training accuracy jumps.

Definition (computed for every run and logged as ``emergence_step``):

1. Smooth the per-step training accuracy with a centred moving average of ``window`` steps
   (default: 5% of the run, at least 5 steps), so one lucky batch cannot trigger it.
2. The *start level* is the mean smoothed accuracy over the first 10% of steps; the *plateau*
   is the mean smoothed accuracy over the last 10% of steps.
3. The run *emerged* when the plateau exceeds the start level by at least ``min_rise``
   (default 0.2 absolute accuracy). A curve that never rises that far did not emerge: no
   step is reported (``emergence_step`` is absent and ``emerged`` is 0), never a made-up number.
4. ``emergence_step`` is the first step at which the smoothed accuracy reaches halfway between
   the start level and the plateau. ``emergence_width`` is the number of steps the smoothed curve
   takes to climb from 10% to 90% of that rise: small for a sudden jump, large for a slow crawl.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Emergence:
    emerged: bool
    step: int | None  # first step at the halfway level (None when not emerged)
    start_level: float
    plateau: float
    width: int | None  # steps from 10% to 90% of the rise (None when not emerged)

    def as_metrics(self) -> dict[str, float]:
        out = {"emerged": float(self.emerged), "emergence/start_level": self.start_level, "emergence/plateau": self.plateau}
        if self.emerged:
            out["emergence_step"] = float(self.step)
            out["emergence/width"] = float(self.width)
        return out


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average; near the ends the window shrinks rather than padding."""
    x = np.asarray(values, dtype=float)
    if window <= 1 or len(x) == 0:
        return x
    c = np.concatenate([[0.0], np.cumsum(x)])
    half = window // 2
    lo = np.clip(np.arange(len(x)) - half, 0, len(x))
    hi = np.clip(np.arange(len(x)) + half + 1, 0, len(x))
    return (c[hi] - c[lo]) / (hi - lo)


def find_emergence(
    steps: Sequence[int], acc: Sequence[float], *, min_rise: float = 0.2, window: int | None = None
) -> Emergence:
    """Apply the definition above to a training-accuracy curve (steps ascending)."""
    if len(steps) != len(acc):
        raise ValueError(f"{len(steps)} steps but {len(acc)} accuracy values")
    if len(acc) < 10:
        a = float(np.mean(acc)) if len(acc) else float("nan")
        return Emergence(False, None, a, a, None)
    steps = np.asarray(steps)
    window = window or max(5, len(acc) // 20)
    s = smooth(acc, window)
    edge = max(1, len(s) // 10)
    start, plateau = float(s[:edge].mean()), float(s[-edge:].mean())
    rise = plateau - start
    if rise < min_rise:
        return Emergence(False, None, start, plateau, None)

    def first_reaching(fraction: float) -> int:
        return int(np.argmax(s >= start + fraction * rise))

    i10, i50, i90 = first_reaching(0.1), first_reaching(0.5), first_reaching(0.9)
    return Emergence(True, int(steps[i50]), start, plateau, int(steps[i90] - steps[i10]))


def plot_curve(steps: Sequence[int], acc: Sequence[float], result: Emergence, path: str, *, title: str = "") -> None:
    """PNG of one run's training accuracy, smoothed curve and emergence step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, acc, color="0.75", lw=0.8, label="train acc (per step)")
    if len(acc) >= 10:
        ax.plot(steps, smooth(acc, max(5, len(acc) // 20)), color="C0", lw=1.8, label="smoothed")
    if result.emerged:
        ax.axvline(result.step, color="C3", ls="--", lw=1.2, label=f"emergence: step {result.step}")
    else:
        ax.text(0.02, 0.92, "did not emerge", transform=ax.transAxes, color="C3")
    ax.set(xlabel="optimizer step", ylabel="teacher-forced accuracy", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
