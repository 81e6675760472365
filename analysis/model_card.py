"""The model card (README.md) of an exported run: what it is, what it was trained on, what it reaches.

Read from the run folder only: ``config.yaml`` (the models, the recipe, the training data), ``result.json``
(steps, emergence, test WERs) and ``transcripts/<split>.jsonl`` (per-utterance errors, for the 95 %
bootstrap interval of each WER).
"""
from __future__ import annotations

import json
from pathlib import Path

from analysis.bootstrap import bootstrap_wer
from harness.config import load_config
from harness.data.manifest import ManifestError, read_manifest


def _data_line(key: str, path: str) -> str:
    try:
        utts = read_manifest(path)
    except (OSError, ManifestError):
        return f"- {key}: `{path}` (not readable at export time)"
    hours = sum(u.duration for u in utts) / 3600
    return f"- {key}: `{path}`, {len(utts):,} utterances, {hours:.2f} h"


def _wer_rows(run: Path, metrics: dict) -> list[str]:
    rows = []
    for f in sorted((run / "transcripts").glob("*.jsonl")):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if not lines:
            continue
        ci = bootstrap_wer([r["errors"] for r in lines], [r["ref_words"] for r in lines])
        rows.append(f"| {f.stem} | {len(lines)} | {100 * ci.wer:.2f} % | [{100 * ci.lo:.2f}, {100 * ci.hi:.2f}] |")
    return rows


def model_card(run_dir: str | Path) -> str:
    """The card as Markdown."""
    run = Path(run_dir)
    cfg = load_config(run / "config.yaml")
    result = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
    metrics, state = result.get("metrics", {}), result.get("state", {})
    steps = state.get("step", metrics.get("train/steps"))
    emergence = (f"step {int(metrics['emergence_step'])}" if "emergence_step" in metrics
                 else "did not emerge" if metrics.get("emerged") == 0 else "not measured (the run has not finished)")
    a = cfg.adapter
    lines = [
        "---", "library_name: transformers", "tags: [speech-recognition, slam-asr, slam-harness]", "---", "",
        f"# SLAM-ASR: {cfg.encoder.name} -> {a.projector} projector (k={a.k}) -> {cfg.llm.name}", "",
        "Exported by `harness export` from the slam-harness run folder "
        f"`{run.name}`. Load it with the harness installed:", "",
        "```python", "from transformers import AutoModel",
        'model = AutoModel.from_pretrained("THIS_FOLDER", trust_remote_code=True)',
        'print(model.transcribe(["speech.flac"]))', "```", "",
        "## Model", "",
        f"- Speech encoder: `{cfg.encoder.name}` ({'trained' if cfg.encoder.trainable else 'frozen'})",
        f"- Projector: `{a.projector}`, downsample rate k={a.k}, hidden {a.hidden}; its weights are `model.safetensors`",
        f"- LLM: `{cfg.llm.name}` ({'LoRA' if cfg.llm.lora.enabled else 'frozen'}), prompt style `{cfg.llm.prompt_style}`, "
        f"prompt {cfg.llm.prompt!r}",
        f"- Decoding: beam {cfg.decode.beam}, at most {cfg.decode.max_new_tokens} new tokens",
        "", "## Training", "",
        _data_line("train", cfg.data.train), _data_line("dev", cfg.data.dev),
        f"- {steps if steps is not None else '?'} optimizer steps of batch {cfg.train.batch_size}, lr {cfg.train.lr:g}, seed {cfg.train.seed}",
        f"- Capability emergence (the harness's detector on training accuracy): {emergence}",
        "", "## Word error rate (test splits of the run; 95 % bootstrap interval over utterances)", "",
    ]
    rows = _wer_rows(run, metrics)
    lines += (["| split | utterances | WER | 95 % interval |", "|---|---|---|---|", *rows] if rows
              else ["No test transcripts in the run folder."])
    return "\n".join(lines) + "\n"
