"""Does the data path hold at LibriSpeech-960 scale? Simulated: a tree of that shape, of tiny real FLACs.

    python -m harness.bench.scale [--sizes 2800,28000,281000] [--work DIR]

For each size it writes a LibriSpeech-shaped tree (``LibriSpeech/train-clean-100``, ``-360``, ``train-other-500``
in the real corpus's proportions; ~113 utterances a speaker in two chapters, a ``<spk>-<chapter>.trans.txt`` per
chapter; every file a real 16 kHz FLAC of 0.1-0.6 s), then measures, each stage in a fresh process so its peak
RSS is its own: indexing the tree into a manifest (``harness data librispeech``), the header scan a run does,
loading the manifest, the feature-cache lookup of a cell (the audio index cold: every file hashed; and warm),
batching one epoch by duration, and a run's start (``harness train`` with tiny models, 1 step, feature cache
off: manifests read, audio scanned, model built, first step taken). Prints seconds and peak RSS (MB) per stage
and size, and the growth factor of each stage between sizes (10x the utterances: linear is 10x).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPLITS = {"train-clean-100": 28_539, "train-clean-360": 104_014, "train-other-500": 148_688}  # LibriSpeech-960
PER_SPEAKER, CHAPTERS = 113, 2
WORDS = "THE OF AND TO A IN THAT HE WAS IT HIS I WITH AS HAD FOR YOU HER BUT SHE NOT AT ON BE IS".split()


def build_tree(root: Path, n: int, seed: int = 0) -> int:
    """A LibriSpeech-960-shaped tree of ``n`` utterances under ``root/LibriSpeech``; returns the count written."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    templates = []  # 50 FLAC files' bytes of 0.1-0.6 s: the tree reuses them (real FLAC headers and frames)
    for k in range(50):
        buf = io.BytesIO()
        samples = int(16000 * (0.1 + 0.5 * k / 49))
        sf.write(buf, (rng.standard_normal(samples) * 300).astype(np.int16), 16000, format="FLAC", subtype="PCM_16")
        templates.append(buf.getvalue())
    total, written = sum(SPLITS.values()), 0
    for s_i, (split, full) in enumerate(SPLITS.items()):
        count = round(n * full / total) if s_i < len(SPLITS) - 1 else n - written
        spk = 0
        while count > 0:
            spk += 1
            for ch in range(CHAPTERS):
                m = min(count, PER_SPEAKER // CHAPTERS + (PER_SPEAKER % CHAPTERS if ch == 0 else 0))
                if m <= 0:
                    break
                folder = root / "LibriSpeech" / split / str(1000 * (s_i + 1) + spk) / str(100 + ch)
                folder.mkdir(parents=True, exist_ok=True)
                lines = []
                for u in range(m):
                    uid = f"{1000 * (s_i + 1) + spk}-{100 + ch}-{u:04d}"
                    (folder / f"{uid}.flac").write_bytes(templates[int(rng.integers(50))])
                    lines.append(f"{uid} " + " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))))
                (folder / f"{1000 * (s_i + 1) + spk}-{100 + ch}.trans.txt").write_text("\n".join(lines) + "\n")
                count -= m
                written += m
    return written


# ---------------------------------------------------------------------------- stages (each in its own process)


def measure_stage(name: str, root: Path, work: Path) -> dict[str, float]:
    """Seconds of the stage alone (its imports and the model it needs are set up before the clock starts)."""
    from harness.config import load_config
    from harness.data.batching import batches_by_duration
    from harness.data.librispeech import librispeech_splits, read_librispeech
    from harness.data.manifest import check_audio_files, read_manifest, write_manifest

    manifest = work / "all.jsonl"
    pre = {}
    if name.startswith("cache lookup"):
        from harness.models import build_encoder
        from harness.run.features import FeatureCache

        pre["utts"] = read_manifest(manifest)
        pre["enc"] = build_encoder(load_config(None, ["encoder.name=tiny:whisper"]))
    elif name == "batch one epoch":
        pre["utts"] = read_manifest(manifest)
    elif name == "run start (1 step)":
        from harness.run.trainer import run_training

        small = work / "small.jsonl"
        write_manifest(small, read_manifest(manifest)[:2])
    t0 = time.perf_counter()
    if name == "index tree -> manifest":
        write_manifest(manifest, [u for s in librispeech_splits(root) for u in read_librispeech(root, s)])
    elif name == "load manifest":
        read_manifest(manifest)
    elif name == "header scan":
        bad = check_audio_files(read_manifest(manifest))
        assert not bad, bad[:3]
    elif name.startswith("cache lookup"):
        if "cold" in name:  # nothing indexed yet: every file is read and hashed
            shutil.rmtree(work / "cache", ignore_errors=True)
            t0 = time.perf_counter()
        cache = FeatureCache(pre["enc"], reference="tiny:whisper", root=work / "cache")
        assert len(cache.missing(pre["utts"])) == len(pre["utts"])  # nothing encoded: every utterance looked up
    elif name == "batch one epoch":
        batches_by_duration(pre["utts"], 60.0, seed=0, epoch=0)
    elif name == "run start (1 step)":
        cfg = load_config(None, ["encoder.name=tiny:whisper", "llm.name=tiny:llama", "llm.prompt_style=plain",
                                 "adapter.hidden=64", "train.device=cpu", f"data.train={manifest}", f"data.dev={small}",
                                 f"data.test={{s: {small}}}", "train.max_steps=1", "train.eval_every=1",
                                 "train.eval_utterances=1", "train.warmup_steps=0", "encoder.cache=false",
                                 "decode.max_new_tokens=2"])
        run_training(cfg, work / "run", progress=False)
    else:
        raise ValueError(name)
    return {"seconds": time.perf_counter() - t0, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


STAGES = ("index tree -> manifest", "header scan", "load manifest", "cache lookup (cold index)",
          "cache lookup (warm index)", "batch one epoch", "run start (1 step)")


def measure_in_fresh_process(name: str, root: Path, work: Path) -> dict[str, float]:
    env = {**os.environ, "HARNESS_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "harness.bench.scale", "--stage", name, "--root", str(root),
                          "--work", str(work)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"stage {name!r} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.bench.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2800,28000,281000")
    ap.add_argument("--work", type=Path, default=Path("bench-scale"))
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.stage:  # one stage, in this process: print its JSON
        print(json.dumps(measure_stage(a.stage, a.root, a.work)))
        return 0
    try:
        sizes = [int(x) for x in a.sizes.split(",")]
        if any(n < 10 for n in sizes):
            raise ValueError
    except ValueError:
        print(f"error: --sizes {a.sizes!r}: expected comma-separated utterance counts >= 10", file=sys.stderr)
        return 2
    results: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        work = a.work.resolve() / f"n{n}"
        root = work / "tree"
        t0 = time.perf_counter()
        if not (root / "LibriSpeech").is_dir():
            build_tree(root, n)
        print(f"{n:,} utterances: tree ready in {time.perf_counter() - t0:.1f} s ({root})", flush=True)
        results[n] = {s: measure_in_fresh_process(s, root, work) for s in STAGES}
    print("\n| stage | " + " | ".join(f"{n:,} utts: s / peak RSS MB" for n in sizes) + " | growth per 10x (s) |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for s in STAGES:
        cells = [f"{results[n][s]['seconds']:.2f} / {results[n][s]['rss_mb']:.0f}" for n in sizes]
        growth = [results[b][s]["seconds"] / max(results[a_][s]["seconds"], 1e-9) * (10 * a_ / b)
                  for a_, b in zip(sizes, sizes[1:])]
        print(f"| {s} | " + " | ".join(cells) + " | " + ", ".join(f"{g:.1f}x" for g in growth) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
