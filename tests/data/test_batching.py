"""Batch samplers: coverage, limits, determinism per (seed, epoch), bucketing."""

import random
from pathlib import Path

import pytest

from harness.data.batching import batches_by_count, batches_by_duration
from harness.data.librispeech import librispeech_splits, read_librispeech
from harness.data.manifest import Utterance

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MINI = SHARED / "librispeech-mini"


@pytest.fixture(scope="module")
def utts() -> list[Utterance]:
    """The 22 real LibriSpeech utterances plus 600 with LibriSpeech-like durations (1-30 s)."""
    real = [u for split in librispeech_splits(MINI) for u in read_librispeech(MINI, split)]
    rng = random.Random(123)
    extra = [Utterance(f"x{i}", f"x{i}.flac", "WORD", round(rng.uniform(1.0, 30.0), 2)) for i in range(600)]
    return real + extra


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


@pytest.mark.parametrize("shuffle", [True, False])
def test_count_covers_every_index_once(utts, shuffle):
    batches = batches_by_count(utts, 16, shuffle=shuffle, seed=1, epoch=0)
    assert sorted(flat(batches)) == list(range(len(utts)))
    assert all(len(b) == 16 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 16
    if not shuffle:
        assert flat(batches) == list(range(len(utts)))


def test_count_determinism_and_epochs(utts):
    a = batches_by_count(utts, 8, shuffle=True, seed=7, epoch=3)
    assert a == batches_by_count(utts, 8, shuffle=True, seed=7, epoch=3)
    assert a != batches_by_count(utts, 8, shuffle=True, seed=7, epoch=4)
    assert a != batches_by_count(utts, 8, shuffle=True, seed=8, epoch=3)


def test_count_drop_last(utts):
    batches = batches_by_count(utts, 100, shuffle=False, seed=0, epoch=0, drop_last=True)
    assert [len(b) for b in batches] == [100] * (len(utts) // 100)


@pytest.mark.parametrize("bucket", [True, False])
@pytest.mark.parametrize("max_seconds", [20.0, 60.0, 200.0])
def test_duration_limit_and_coverage(utts, bucket, max_seconds):
    batches = batches_by_duration(utts, max_seconds, bucket=bucket, shuffle=True, seed=0, epoch=0)
    assert sorted(flat(batches)) == list(range(len(utts)))
    for b in batches:
        total = sum(utts[i].duration for i in b)
        # over the limit only as a lone utterance that alone exceeds it
        assert total <= max_seconds or (len(b) == 1 and utts[b[0]].duration > max_seconds)


def test_duration_long_utterance_is_alone():
    utts = [Utterance(str(i), "a.flac", "A", d) for i, d in enumerate([3.0, 50.0, 4.0, 5.0, 45.0])]
    batches = batches_by_duration(utts, 20.0, shuffle=False, seed=0, epoch=0)
    assert [1] in batches and [4] in batches
    assert sorted(flat(batches)) == [0, 1, 2, 3, 4]


def test_duration_max_count(utts):
    batches = batches_by_duration(utts, 1e9, max_count=10, shuffle=True, seed=0, epoch=0)
    assert max(len(b) for b in batches) == 10
    assert sorted(flat(batches)) == list(range(len(utts)))


def test_duration_determinism_and_epochs(utts):
    kw = {"bucket": True, "shuffle": True, "pool_size": 200}
    a = batches_by_duration(utts, 60.0, seed=3, epoch=0, **kw)
    assert a == batches_by_duration(utts, 60.0, seed=3, epoch=0, **kw)
    assert a != batches_by_duration(utts, 60.0, seed=3, epoch=1, **kw)
    assert a != batches_by_duration(utts, 60.0, seed=4, epoch=0, **kw)
    # the batch contents change across epochs, not only their order
    assert sorted(map(sorted, a)) != sorted(map(sorted, batches_by_duration(utts, 60.0, seed=3, epoch=1, **kw)))


def test_bucketing_reduces_padding(utts):
    def padding(batches):  # seconds of padding if each batch is padded to its longest item
        return sum(len(b) * max(utts[i].duration for i in b) - sum(utts[i].duration for i in b) for b in batches)

    bucketed = batches_by_duration(utts, 120.0, bucket=True, shuffle=True, seed=0, epoch=0)
    plain = batches_by_duration(utts, 120.0, bucket=False, shuffle=True, seed=0, epoch=0)
    assert padding(bucketed) < 0.25 * padding(plain)


def test_no_shuffle_is_fixed(utts):
    a = batches_by_duration(utts, 60.0, shuffle=False, seed=0, epoch=0)
    assert a == batches_by_duration(utts, 60.0, shuffle=False, seed=5, epoch=9)


@pytest.mark.parametrize("kwargs", [
    {"max_seconds": 0},
    {"max_seconds": 10, "max_count": 0},
    {"max_seconds": 10, "pool_size": 0},
])
def test_duration_bad_arguments(utts, kwargs):
    with pytest.raises(ValueError):
        batches_by_duration(utts, **kwargs)


def test_empty():
    assert batches_by_duration([], 10.0) == [] and batches_by_count([], 4) == []
