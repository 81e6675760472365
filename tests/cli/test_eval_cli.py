"""`harness eval RUN --split NAME=MANIFEST`: real recordings at any rate and channel count, WER under both
normalisers, the CTC head's own reading, clear errors for bad splits. Real processes, real audio files."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.conftest import audio, tiny_config
from harness.config import to_yaml
from harness.data.manifest import Utterance, write_manifest
from harness.run.trainer import run_training


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, utts_by_duration) -> tuple[Path, list]:
    """A tiny run with a CTC head, trained a few steps on three real utterances."""
    tmp = tmp_path_factory.mktemp("eval")
    utts = utts_by_duration[:3]
    write_manifest(tmp / "train.jsonl", utts)
    m = str(tmp / "train.jsonl")
    cfg = tiny_config("adapter.k=1", "adapter.ctc.weight=1", "train.max_steps=3", "train.eval_every=0",
                      "train.warmup_steps=0", f"data.train={m}", f"data.dev={m}", f"data.test={{mini: {m}}}",
                      "decode.max_new_tokens=4", "data.scan=off")
    with pytest.MonkeyPatch.context() as env:  # a module-scoped fixture: no function-scoped monkeypatch
        env.setenv("HARNESS_CACHE", str(tmp / "cache"))
        run_training(cfg, tmp / "run", progress=False)
    assert (tmp / "run" / "config.yaml").read_text() == to_yaml(cfg)
    return tmp, utts


def test_eval_reads_stereo_44k_recordings_and_prints_both_normalisers(trained) -> None:
    tmp, utts = trained
    converted = []
    for u in utts:  # the real recordings as a user might have them: 44.1 kHz stereo WAV
        mono = audio(u).numpy()
        wav = soxr.resample(mono, 16000, 44100)
        path = tmp / f"{u.id}-44k-stereo.wav"
        sf.write(path, np.stack([wav, 0.5 * wav], axis=1), 44100)
        converted.append(Utterance(id=u.id, audio=str(path), text=u.text, duration=u.duration))
    write_manifest(tmp / "real.jsonl", converted)
    out = _cli("eval", str(tmp / "run"), "--split", f"real={tmp / 'real.jsonl'}", "--split", f"orig={tmp / 'train.jsonl'}", cwd=tmp)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "WER" in line]
    pattern = re.compile(r"^(real|orig)\s+(llm|ctc head)\s+(librispeech|whisper)\s+WER\s+[\d.]+%\s+\(S \d+, D \d+, I \d+, N \d+\)$")
    assert len(lines) == 8 and all(pattern.match(line) for line in lines), out.stdout


@pytest.mark.parametrize("spec, message", [
    ("nomanifest", "expected NAME=MANIFEST"),
    ("x=", "expected NAME=MANIFEST"),
    ("x=missing.jsonl", "manifest missing.jsonl not found"),
])
def test_eval_rejects_bad_splits_in_one_line(trained, spec: str, message: str) -> None:
    tmp, _ = trained
    out = _cli("eval", str(tmp / "run"), "--split", spec, cwd=tmp)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_eval_takes_decode_overrides_and_refuses_others(trained) -> None:
    """``decode.*`` overrides change how a trained run decodes (here a cap of 4 + 0 x positions, so at
    most 4 tokens: the same as the run's own max_new_tokens=4, and a WER line per reading); a setting
    that would change the model is refused in one line."""
    tmp, _ = trained
    out = _cli("eval", str(tmp / "run"), "decode.tokens_per_position=0.01", "decode.max_new_tokens=2", cwd=tmp)
    assert out.returncode == 0, out.stderr
    assert sum("WER" in line for line in out.stdout.splitlines()) == 4
    bad = _cli("eval", str(tmp / "run"), "adapter.k=2", cwd=tmp)
    assert bad.returncode != 0 and "only decode.* settings can change after training" in bad.stderr
    assert "Traceback" not in bad.stderr
    worse = _cli("eval", str(tmp / "run"), "decode.tokens_per_position=0", cwd=tmp)
    assert worse.returncode != 0 and "decode.tokens_per_position: expected > 0 or null" in worse.stderr


def test_eval_decodes_a_ctc_run_jointly_with_its_head(trained) -> None:
    """``decode.ctc_weight`` needs no retraining: a finished run with a CTC head decodes with it and the LLM
    together; beam search with it is refused in one line."""
    tmp, _ = trained
    out = _cli("eval", str(tmp / "run"), "decode.ctc_weight=0.7", "decode.ctc_candidates=4", cwd=tmp)
    assert out.returncode == 0, out.stderr
    assert sum("WER" in line for line in out.stdout.splitlines()) == 4
    beam = _cli("eval", str(tmp / "run"), "decode.ctc_weight=0.7", "decode.beam=2", cwd=tmp)
    assert beam.returncode != 0 and "Traceback" not in beam.stderr
    assert "decode.ctc_weight: joint CTC decoding is greedy; expected decode.beam: 1, got 2" in beam.stderr
