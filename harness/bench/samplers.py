"""Duration batching, side by side: the harness's own bucketing against Lhotse's DynamicBucketingSampler.

    python -m harness.bench.samplers MANIFEST [--max-seconds 60] [--epochs 3] [--seed 0]

MANIFEST is any manifest the harness reads (JSONL or Lhotse), or a LibriSpeech-style TSV with ``id`` and
``duration`` columns (``../shared/data/texts``: the durations of 2,608 real LibriSpeech utterances). Only
durations matter, so no audio is read. For each sampler, over ``--epochs`` epochs with the same seed and
batch budget (at most ``--max-seconds`` of audio a batch), it prints: batches per epoch, the padding fraction
(the share of a padded batch, ``n x longest``, that is padding: what a step computes for nothing), the mean
seconds of speech a batch, how many batches the sampler makes per second, whether the same seed gives the
same batches, and whether a sampler stopped after a third of an epoch and restored from its state resumes with
exactly the batches an uninterrupted one would give (the harness: a pure function of seed and epoch; Lhotse:
``state_dict`` / ``load_state_dict``).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from harness.data.batching import batches_by_duration
from harness.data.manifest import Utterance, read_manifest


def read_durations(path: Path) -> list[Utterance]:
    if path.suffix == ".tsv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows or "duration" not in rows[0]:
            raise ValueError(f"{path}: expected a TSV with a 'duration' column")
        return [Utterance(id=r["id"], audio="none.flac", text="", duration=float(r["duration"])) for r in rows]
    return read_manifest(path)


def padding_fraction(batches: list[list[int]], durations: np.ndarray) -> float:
    padded = sum(len(b) * durations[b].max() for b in batches)
    return 1.0 - float(durations.sum()) / padded


class HarnessSampler:
    name = "harness batches_by_duration"

    def __init__(self, utts, max_seconds: float, seed: int) -> None:
        self.utts, self.max_seconds, self.seed = utts, max_seconds, seed

    def epoch(self, e: int) -> list[list[int]]:
        return batches_by_duration(self.utts, self.max_seconds, seed=self.seed, epoch=e)

    def resumed(self, e: int, after: int) -> list[list[int]]:
        return self.epoch(e)[after:]  # a pure function of (seed, epoch): skip what was trained


class LhotseSampler:
    name = "lhotse DynamicBucketingSampler"

    def __init__(self, utts, max_seconds: float, seed: int) -> None:
        from harness.data.lhotse_manifests import to_cutset

        self.cuts = to_cutset(utts, read_headers=False)
        self.index = {u.id: i for i, u in enumerate(utts)}
        self.max_seconds, self.seed = max_seconds, seed

    def _sampler(self):
        import warnings

        from lhotse.dataset import DynamicBucketingSampler

        warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")  # memory advice; all cuts are in memory here
        warnings.filterwarnings("ignore", message=".*exceeded the max_duration.*")  # an utterance longer than the budget
        return DynamicBucketingSampler(self.cuts, max_duration=self.max_seconds, shuffle=True, seed=self.seed,
                                       num_buckets=10, world_size=1, rank=0)

    def _ids(self, batch) -> list[int]:
        return [self.index[c.supervisions[0].id] for c in batch]

    def epoch(self, e: int) -> list[list[int]]:
        s = self._sampler()
        s.set_epoch(e)
        return [self._ids(b) for b in s]

    def resumed(self, e: int, after: int) -> list[list[int]]:
        s = self._sampler()
        s.set_epoch(e)
        it = iter(s)
        for _ in range(after):
            next(it)
        state = s.state_dict()
        fresh = self._sampler()
        fresh.load_state_dict(state)
        return [self._ids(b) for b in fresh]


def _shared(a: list[list[int]], b: list[list[int]]) -> float:
    """The share of ``b``'s batches that ``a`` holds as well, as sets (1.0: only their order changed)."""
    seen = {frozenset(x) for x in a}
    return sum(frozenset(x) in seen for x in b) / len(b)


def measure(sampler, durations: np.ndarray, epochs: int) -> dict[str, object]:
    t0 = time.perf_counter()
    runs = [sampler.epoch(e) for e in range(epochs)]
    seconds = time.perf_counter() - t0
    n = sum(len(r) for r in runs)
    every = sorted(i for b in runs[0] for i in b)
    after = len(runs[0]) // 3
    return {
        "batches / epoch": f"{n / epochs:.1f}",
        "padding fraction": f"{np.mean([padding_fraction(r, durations) for r in runs]):.3f}",
        "speech s / batch": f"{durations.sum() * epochs / n:.1f}",
        "batches / s (sampler)": f"{n / seconds:,.0f}",
        "each utterance once an epoch": str(every == list(range(len(durations)))),
        "same seed, same batches": str(sampler.epoch(0) == runs[0]),
        "batches of epoch 1 also in epoch 0": "-" if epochs < 2 else f"{_shared(runs[0], runs[1]):.0%}",
        "resume mid-epoch = uninterrupted": str(sampler.resumed(0, after) == runs[0][after:]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.bench.samplers", description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.max_seconds <= 0 or a.epochs < 1:
        print("error: --max-seconds must be > 0 and --epochs >= 1", file=sys.stderr)
        return 2
    try:
        utts = read_durations(a.manifest)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    durations = np.array([u.duration for u in utts])
    print(f"{a.manifest.name}: {len(utts):,} utterances, {durations.sum() / 3600:.2f} h; "
          f"at most {a.max_seconds:g} s of audio a batch, {a.epochs} epochs, seed {a.seed}\n")
    rows = {s.name: measure(s, durations, a.epochs) for s in (HarnessSampler(utts, a.max_seconds, a.seed),
                                                             LhotseSampler(utts, a.max_seconds, a.seed))}
    names = list(rows)
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for key in next(iter(rows.values())):
        print(f"| {key} | " + " | ".join(str(rows[n][key]) for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
