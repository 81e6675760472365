"""Planning a corpus (which sentence goes to which split and voice) and synthesizing it into manifests."""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from multiprocessing import get_context
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from harness.data.audio import SAMPLE_RATE
from harness.data.manifest import Utterance, write_manifest

from harness.data.synth.errors import SynthesisError
from harness.data.synth.voices import DEFAULT_UNSEEN_VOICES, DEFAULT_VOICES, VOICES, Voice, missing_voices

SPLITS = ("train", "dev", "test", "test_unseen")


def plan_corpus(
    sentences: Sequence[str],
    *,
    voices: Sequence[str] = DEFAULT_VOICES,
    unseen_voices: Sequence[str] = DEFAULT_UNSEEN_VOICES,
    n_train: int,
    n_dev: int,
    n_test: int,
    n_test_unseen: int,
    seed: int = 0,
) -> dict[str, list[tuple[str, str]]]:
    """Decide which sentence each split gets and which voice speaks it: {split: [(text, voice)]}.

    Deterministic for (set of sentences, voices, counts, seed); the input order of
    `sentences` does not matter. Every sentence is used at most once in the whole
    corpus, so no test sentence is ever heard in training. Evaluation splits are
    drawn first, so changing n_train does not change dev/test. Within a split the
    voices take turns, so each voice speaks an equal share (+-1).
    """
    if not voices:
        raise ValueError("voices must name at least one training voice")
    if n_test_unseen and not unseen_voices:
        raise ValueError("n_test_unseen > 0 needs at least one unseen voice")
    overlap = sorted(set(voices) & set(unseen_voices))
    if overlap:
        raise ValueError(f"unseen_voices must not be used in training; both lists contain {overlap}")
    unknown = sorted(v for v in [*voices, *unseen_voices] if v not in VOICES)
    if unknown:
        raise ValueError(f"unknown voice(s) {unknown}; registered: {', '.join(sorted(VOICES))}")
    counts = {"test_unseen": n_test_unseen, "test": n_test, "dev": n_dev, "train": n_train}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"split sizes must be >= 0, got {counts}")

    pool = sorted(set(sentences))
    needed = sum(counts.values())
    if needed > len(pool):
        raise ValueError(f"need {needed} distinct sentences for {counts}, only {len(pool)} given")
    random.Random(seed).shuffle(pool)

    plan: dict[str, list[tuple[str, str]]] = {}
    start = 0
    for split, n in counts.items():  # evaluation splits first, see docstring
        texts = pool[start:start + n]
        start += n
        split_voices = list(unseen_voices if split == "test_unseen" else voices)
        turns = [split_voices[i % len(split_voices)] for i in range(n)]
        random.Random(f"{seed}/{split}").shuffle(turns)
        plan[split] = list(zip(texts, turns))
    return {split: plan[split] for split in SPLITS}


def _audio_name(voice: str, text: str) -> str:
    return hashlib.sha1(f"{voice}\n{text}".encode()).hexdigest()[:16] + ".flac"


# One instance per voice per process: Piper takes ~0.5 s to load its model.
_voice_cache: dict[str, Voice] = {}


def _synthesize_one(task: tuple[str, str, str]) -> None:
    voice_name, text, path = task
    voice = _voice_cache.get(voice_name)
    if voice is None:
        voice = _voice_cache[voice_name] = VOICES[voice_name]()
    voice.synthesize(text, path)


def synthesize_corpus(
    sentences: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    voices: Sequence[str] = DEFAULT_VOICES,
    unseen_voices: Sequence[str] = DEFAULT_UNSEEN_VOICES,
    n_train: int = 1200,
    n_dev: int = 100,
    n_test: int = 100,
    n_test_unseen: int = 100,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Path]:
    """Synthesize the corpus planned by `plan_corpus` into out_dir; returns {split: manifest path}.

    Writes out_dir/<split>.jsonl (speaker = voice name) and the audio under
    out_dir/audio/<voice>/. Audio files that already exist are reused (files are
    written atomically, so an existing file is complete). workers > 1 runs the
    engines in that many (spawned) processes, so a script calling this with workers > 1
    needs the usual `if __name__ == "__main__":` guard.
    """
    out_dir = Path(out_dir)
    missing = missing_voices([*voices, *(unseen_voices if n_test_unseen else [])])
    if missing:
        raise SynthesisError("cannot synthesize: " + "; ".join(f"{v}: {r}" for v, r in missing.items()))
    plan = plan_corpus(sentences, voices=voices, unseen_voices=unseen_voices, n_train=n_train,
                       n_dev=n_dev, n_test=n_test, n_test_unseen=n_test_unseen, seed=seed)

    tasks: list[tuple[str, str, str]] = []
    for items in plan.values():
        for text, voice in items:
            path = out_dir / "audio" / voice / _audio_name(voice, text)
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tasks.append((voice, text, str(path)))

    bar = tqdm(total=len(tasks), desc="synthesizing", unit="utt", disable=not progress or not tasks)
    if workers > 1 and len(tasks) > 1:
        # spawn, not fork: a forked child inherits onnxruntime's thread pools, whose threads
        # did not survive the fork, and can hang freeing them. Spawn costs ~2 s per worker.
        # Leaving the block terminates the workers, also on Ctrl-C / SIGTERM: none is left behind.
        with get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_synthesize_one, tasks, chunksize=4):
                bar.update()
    else:
        for task in tasks:
            _synthesize_one(task)
            bar.update()
    bar.close()

    manifests: dict[str, Path] = {}
    for split, items in plan.items():
        utts = []
        for i, (text, voice) in enumerate(items):
            path = out_dir / "audio" / voice / _audio_name(voice, text)
            info = sf.info(str(path))
            utts.append(Utterance(id=f"synth-{split}-{i:05d}", audio=str(path), text=text,
                                  duration=info.frames / info.samplerate, speaker=voice))
        manifests[split] = out_dir / f"{split}.jsonl"
        write_manifest(manifests[split], utts)

    config = {"seed": seed, "voices": list(voices), "unseen_voices": list(unseen_voices),
              "counts": {s: len(plan[s]) for s in SPLITS}, "sample_rate": SAMPLE_RATE}
    (out_dir / "synth_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return manifests
