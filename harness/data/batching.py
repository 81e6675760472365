"""Batch samplers: lists of index lists into a list of utterances.

Both samplers are pure functions of (utterances, options, seed, epoch): the same
arguments always give the same batches, so a resumed run sees exactly the batches
it would have seen, and a new epoch gets a new order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .manifest import Utterance


def _rng(seed: int, epoch: int) -> np.random.Generator:
    # Seeding with the pair (not seed + epoch) keeps (seed=1, epoch=0) and (seed=0, epoch=1) apart.
    return np.random.default_rng([seed, epoch])


def batches_by_count(
    utts: Sequence[Utterance],
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
) -> list[list[int]]:
    """Fixed-size batches of indices; the last one may be smaller unless drop_last."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = _rng(seed, epoch).permutation(len(utts)) if shuffle else np.arange(len(utts))
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def _cut(indices: Sequence[int], durations: np.ndarray, max_seconds: float, max_count: int | None) -> list[list[int]]:
    """Greedily cut an index sequence into consecutive batches within the limits.

    An utterance longer than max_seconds cannot share a batch, so it gets one to itself.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0.0
    for i in indices:
        d = float(durations[i])
        full = current and (total + d > max_seconds or (max_count is not None and len(current) >= max_count))
        if full:
            batches.append(current)
            current, total = [], 0.0
        current.append(int(i))
        total += d
    if current:
        batches.append(current)
    return batches


def batches_by_duration(
    utts: Sequence[Utterance],
    max_seconds: float,
    *,
    bucket: bool = True,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    pool_size: int = 2000,
    max_count: int | None = None,
) -> list[list[int]]:
    """Batches whose total audio duration is at most max_seconds (and at most max_count items).

    With bucket=True the (shuffled) utterances are split into pools of pool_size,
    each pool is sorted by duration, and cut into batches, so a batch holds
    utterances of similar length and padding is small; pools keep that sort from
    making every epoch identical. Finally the batch order is shuffled, so long and
    short batches are interleaved. A single utterance longer than max_seconds
    forms a batch of its own.
    """
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    if max_count is not None and max_count < 1:
        raise ValueError(f"max_count must be >= 1 or None, got {max_count}")
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    rng = _rng(seed, epoch)
    durations = np.array([u.duration for u in utts], dtype=np.float64)
    order = rng.permutation(len(utts)) if shuffle else np.arange(len(utts))

    batches: list[list[int]] = []
    if bucket:
        for start in range(0, len(order), pool_size):
            pool = order[start:start + pool_size]
            pool = pool[np.argsort(durations[pool], kind="stable")]
            batches.extend(_cut(pool, durations, max_seconds, max_count))
    else:
        batches = _cut(order, durations, max_seconds, max_count)

    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def batches_shortest_first(
    utts: Sequence[Utterance],
    *,
    batch_size: int | None = None,
    max_seconds: float | None = None,
) -> list[list[int]]:
    """A length curriculum: batches from the shortest utterances to the longest, by count or by seconds.

    Exactly one of ``batch_size`` / ``max_seconds``. Ties keep manifest order, so the result is deterministic.
    """
    if (batch_size is None) == (max_seconds is None):
        raise ValueError("give exactly one of batch_size or max_seconds")
    durations = np.array([u.duration for u in utts], dtype=np.float64)
    order = np.argsort(durations, kind="stable")
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    return _cut(order, durations, max_seconds, None)
