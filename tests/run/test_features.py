"""The frozen-encoder feature cache on real LibriSpeech audio and a tiny Whisper encoder: misses are
encoded, hits are read back, and a changed encoder or audio file is never served stale frames.
(Two processes filling one cache at once: ``test_concurrency.py``.)"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.run.features import AudioDigests, FeatureCache, audio_digest
from harness.models import build_encoder

from tests.conftest import audio, tiny_config


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder(tiny_config()).eval()


@pytest.fixture
def utts(tmp_path: Path, utts_by_duration) -> list:
    """Four real utterances, their audio copied into the test's folder (so the tests may edit it)."""
    out = []
    for u in utts_by_duration[:4]:
        dst = tmp_path / "audio" / Path(u.audio).name
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(u.audio, dst)
        out.append(replace(u, audio=str(dst)))
    return out


def _cache(encoder, root: Path, **kw) -> FeatureCache:
    return FeatureCache(encoder, reference=kw.get("reference", "tiny:whisper"), root=root)


def test_a_miss_is_encoded_once_and_then_read_back(encoder, utts, tmp_path: Path) -> None:
    cache = _cache(encoder, tmp_path / "cache")
    assert cache.missing(utts) == utts
    assert cache.fill(utts, batch_seconds=5.0, progress=False) == len(utts)
    assert cache.missing(utts) == [] and cache.fill(utts, progress=False) == 0

    files = sorted(cache.dir.rglob("*.safetensors"))
    assert len(files) == len(utts)
    stored = [load_file(str(f))["frames"] for f in files]
    assert all(t.dtype == torch.float16 for t in stored)
    assert cache.estimate_bytes(utts) == sum(t.numel() * 2 for t in stored)  # the printed estimate is the real size

    frames, lengths = cache.load(utts)  # B, T, D in fp32, padded
    with torch.no_grad():
        want, want_lengths = encoder([audio(u) for u in utts])
    assert torch.equal(lengths, want_lengths)
    for f, w, n in zip(frames, want, lengths):
        n = int(n)
        # fp16 storage; batches of other lengths may round a last bit differently
        torch.testing.assert_close(f[:n], w[:n], atol=2e-3, rtol=1e-3)
        assert not f[n:].any()


def test_a_new_process_finds_the_frames_without_reading_the_audio_again(encoder, utts, tmp_path: Path) -> None:
    first = _cache(encoder, tmp_path / "cache")
    first.fill(utts, progress=False)
    assert first.digests.hashed == len(utts)
    again = _cache(encoder, tmp_path / "cache")  # what the next run, grid cell or trial opens
    assert again.missing(utts) == []
    assert again.digests.hashed == 0  # every digest came from the index


def test_edited_audio_is_a_miss_even_with_its_size_and_mtime_restored(encoder, utts, tmp_path: Path) -> None:
    cache = _cache(encoder, tmp_path / "cache")
    cache.fill(utts, progress=False)
    edited = Path(utts[1].audio)
    before, st = audio_digest(edited), edited.stat()
    data = bytearray(edited.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    edited.write_bytes(bytes(data))
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))  # what `cp -p` or `touch -d` would do
    assert edited.stat().st_size == st.st_size and edited.stat().st_mtime_ns == st.st_mtime_ns

    reopened = _cache(encoder, tmp_path / "cache")
    assert reopened.missing(utts) == [utts[1]]
    assert reopened.digests.hashed == 1 and audio_digest(edited) != before


def test_a_changed_encoder_or_input_mode_never_reads_old_frames(encoder, utts, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = _cache(encoder, root)
    cache.fill(utts, progress=False)

    pad30 = build_encoder(tiny_config("encoder.whisper.input_mode=pad30"))
    pad30.load_state_dict(encoder.state_dict())
    assert _cache(pad30, root).missing(utts) == utts
    assert _cache(encoder, root, reference="tiny:other").missing(utts) == utts
    changed = build_encoder(tiny_config())
    changed.load_state_dict(encoder.state_dict())
    assert _cache(changed, root).missing(utts) == []  # same weights: same frames
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert _cache(changed, root).missing(utts) == utts


def test_a_damaged_digest_index_costs_a_rehash_not_an_error(utts, tmp_path: Path) -> None:
    index = AudioDigests(tmp_path / "index")
    paths = [u.audio for u in utts]
    want = index.get(paths)
    assert want == {p: audio_digest(p) for p in paths}
    for shard in (tmp_path / "index").glob("*.json"):
        shard.write_text('{"truncated": [1, 2')
    again = AudioDigests(tmp_path / "index")
    assert again.get(paths) == want and again.hashed == len(paths)
    assert AudioDigests(tmp_path / "index").get(paths) == want  # and the index is whole again
    assert not list((tmp_path / "index").glob(".*.tmp"))


def test_an_index_saved_by_another_process_meanwhile_is_merged(tmp_path: Path) -> None:
    files = []
    for i in range(40):  # 40 files in 16 shards: some shard holds at least three
        f = tmp_path / f"{i}.flac"
        f.write_bytes(bytes([i]) * 100)
        files.append(str(f))
    by_shard: dict[str, list[str]] = {}
    for f in files:
        by_shard.setdefault(AudioDigests._shard_name(f), []).append(f)
    f1, f2, f3 = next(fs for fs in by_shard.values() if len(fs) >= 3)[:3]

    a, b = AudioDigests(tmp_path / "index"), AudioDigests(tmp_path / "index")
    b.get([f1])  # b now holds the shard as it was: f1 only
    a.get([f2])  # another process adds f2 to the same shard
    b.get([f3])  # b's save must keep a's f2
    fresh = AudioDigests(tmp_path / "index")
    fresh.get([f1, f2, f3])
    assert fresh.hashed == 0


def test_a_trainable_encoder_bypasses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, utts) -> None:
    from harness.data.manifest import write_manifest
    from harness.run.trainer import Trainer

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    write_manifest(tmp_path / "utts.jsonl", utts)
    m = str(tmp_path / "utts.jsonl")
    for trainable, cached in ((False, True), (True, False)):
        cfg = tiny_config(f"data.train={m}", f"data.dev={m}", f"data.test={{t: {m}}}", "data.scan=off", f"encoder.trainable={str(trainable).lower()}",
                          "train.max_steps=1")
        trainer = Trainer(cfg, tmp_path / f"run-{trainable}", progress=False)
        trainer.setup()
        assert (trainer.features is not None) == cached
    assert len(list((tmp_path / "cache" / "features").rglob("*.safetensors"))) == len(utts)  # from the frozen run only


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-shape"])
def test_a_corrupt_entry_is_named_and_recomputed(encoder, utts, tmp_path: Path, damage: str, caplog) -> None:
    """The old cache read every entry with ``load_file`` and a truncated or garbage file raised
    safetensors' own error, naming no file, in every later run that needed that utterance."""
    from safetensors.torch import save_file

    cache = _cache(encoder, tmp_path / "cache")
    cache.fill(utts, progress=False)
    want, want_lengths = cache.load(utts)
    victim = cache._path(utts[1])
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "garbage":
        victim.write_bytes(os.urandom(256))
    else:
        save_file({"frames": torch.zeros(3, encoder.dim + 1, dtype=torch.float16)}, str(victim))
    with caplog.at_level("WARNING", logger="harness.features"):
        frames, lengths = cache.load(utts)
    assert torch.equal(lengths, want_lengths)
    assert torch.allclose(frames, want, atol=1e-2, rtol=1e-2)  # recomputed (alone, not in a batch: fp16 rounding)
    assert str(victim) in caplog.text and "corrupt" in caplog.text
    assert load_file(str(victim))["frames"].shape[1] == encoder.dim  # the entry is whole again
