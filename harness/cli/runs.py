"""``harness train | eval | transcribe | export``: one run."""
from __future__ import annotations

from pathlib import Path

import click

from harness.cli.common import POSITIVE_INT, HarnessError


@click.command()
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.argument("overrides", nargs=-1)
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run folder (default: runs/<config hash>).")
@click.option("--no-progress", is_flag=True, help="No progress bars (logs only).")
def train(config: str | None, overrides: tuple[str, ...], out: str | None, no_progress: bool) -> None:
    """Train one run from CONFIG (YAML; omit for defaults) with a.b=v OVERRIDES, then evaluate it."""
    from harness.run import distributed
    from harness.config import config_hash, load_config
    from harness.models import validate_references
    from harness.run.trainer import default_run_dir, run_training

    if config is not None and "=" in config and not Path(config).exists():
        overrides, config = (config, *overrides), None  # `harness train a.b=v` with no file
    cfg = load_config(config, overrides)
    validate_references(cfg)
    out_dir = Path(out) if out else default_run_dir(cfg)
    click.echo(f"run {config_hash(cfg)[:12]} -> {out_dir}")
    try:
        result = run_training(cfg, out_dir, progress=not no_progress)
    finally:
        distributed.shutdown()  # under torchrun: every collective is done by now
    _print_summary(result.metrics, result.state.step)


def _print_summary(metrics: dict[str, float], steps: int) -> None:
    click.echo(f"\nsteps trained: {steps}")
    for key in sorted(metrics):
        value = metrics[key]
        if key.endswith("/wer"):
            click.echo(f"  {key:<40} {100 * value:7.2f}%")
        elif key.startswith("dev/"):
            click.echo(f"  {key:<40} {value:8.4f}")


def _load_run(run_dir: str):
    """(config, model in eval mode) of a run folder, or of a folder ``harness export`` wrote."""
    from safetensors.torch import load_file

    from harness.config import build_config, load_config
    from harness.models import build_model
    from harness.run.checkpoint import trained_weights
    from harness.run.trainer import resolve_device

    if not (Path(run_dir) / "config.yaml").is_file() and (Path(run_dir) / "config.json").is_file():
        from harness.run.hf import SlamAsrModel

        exported = SlamAsrModel.from_pretrained(run_dir)
        return build_config(exported.config.harness_config), exported.speech_llm.eval()
    cfg = load_config(Path(run_dir) / "config.yaml")
    try:
        weights = trained_weights(run_dir)
    except FileNotFoundError as e:
        raise HarnessError(str(e)) from None
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, device=device)
    model.load_state_dict(load_file(str(weights), device=str(device)), strict=False)
    return cfg, model.eval()


@click.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--split", "splits", multiple=True, help="NAME=MANIFEST to evaluate (default: the run's test splits).")
@click.option("--beam", type=POSITIVE_INT, default=None, help="Override decode.beam.")
@click.argument("overrides", nargs=-1)
def eval_cmd(run_dir: str, splits: tuple[str, ...], beam: int | None, overrides: tuple[str, ...]) -> None:
    """Decode splits with a trained run; print WER (S/D/I) under both normalisers. OVERRIDES
    (``decode.a=v``) change how it decodes, e.g. ``decode.tokens_per_position=1.5``.

    ``librispeech`` keeps letters, digits and apostrophes, uppercased; ``whisper`` is Whisper's English
    normaliser, which also unifies numbers ("1813" = "eighteen thirteen") and abbreviations. Audio of
    any sample rate and channel count is resampled to 16 kHz mono. A run with a CTC head also gets
    the WER of the head's own greedy reading (no LLM).
    """
    import dataclasses

    from harness.data.manifest import read_manifest
    from harness.run.decode import ctc_transcribe, evaluate_split
    from harness.metrics import NORMALISERS, word_errors

    named = {}
    for spec in splits:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise HarnessError(f"--split {spec!r}: expected NAME=MANIFEST, e.g. --split real=data/real.jsonl")
        if not Path(path).is_file():
            raise HarnessError(f"--split {spec!r}: manifest {path} not found")
        named[name] = path
    for text in overrides:
        if not text.startswith("decode."):
            raise HarnessError(f"override {text!r}: only decode.* settings can change after training")
    cfg, model = _load_run(run_dir)
    if overrides:
        from harness.config import load_config

        cfg = dataclasses.replace(cfg, decode=load_config(Path(run_dir) / "config.yaml", overrides).decode)
    decode_cfg = dataclasses.replace(cfg.decode, beam=beam) if beam else cfg.decode
    if not named:
        named = {**cfg.data.test, **{k: v for k, v in cfg.data.optional_test.items() if Path(v).exists()}}
    if not named:
        raise HarnessError(f"{run_dir}: the run's config names no test split (data.test); "
                           f"pass one with --split NAME=MANIFEST")
    for name, path in named.items():
        utts = read_manifest(path)
        if not utts:
            raise HarnessError(f"{path}: split {name!r} holds no utterances; nothing to evaluate")
        res = evaluate_split(model, name, utts, decode_cfg)
        readings = {"llm": [r["hypothesis"] for r in res.rows]}
        if model.ctc is not None:
            readings["ctc head"] = ctc_transcribe(model, utts, batch_size=decode_cfg.batch_size)
        refs = [u.text for u in utts]
        for reading, hyps in readings.items():
            for norm in NORMALISERS:
                w = word_errors(refs, hyps, normaliser=norm)[0]
                click.echo(f"{name:<20} {reading:<8} {norm:<11} WER {100 * w.wer:6.2f}%  "
                           f"(S {w.substitutions}, D {w.deletions}, I {w.insertions}, N {w.ref_words})")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def transcribe(run_dir: str, audio: tuple[str, ...]) -> None:
    """Transcribe AUDIO files with a trained run (its folder, or a folder `harness export` wrote)."""
    from harness.run.decode import transcribe_audio

    cfg, model = _load_run(run_dir)
    for path in audio:
        click.echo(f"{path}\t{transcribe_audio(model, [path], cfg)[0]}")


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
def export(run_dir: str, out_dir: str) -> None:
    """Write RUN_DIR as a folder transformers loads (AutoModel.from_pretrained(OUT_DIR, trust_remote_code=True)):
    config.json (the references, prompt, k, decoding), model.safetensors (the trained weights) and a model card."""
    from analysis.model_card import model_card
    from harness.run.hf import export_run

    if not (Path(run_dir) / "config.yaml").is_file():
        raise HarnessError(f"{run_dir}: not a run folder (no config.yaml)")
    try:
        out = export_run(run_dir, out_dir)
    except (FileNotFoundError, FileExistsError) as e:
        raise HarnessError(str(e)) from None
    (out / "README.md").write_text(model_card(run_dir))
    click.echo(f"exported {run_dir} -> {out} (config.json, model.safetensors, modeling_slam_asr.py, README.md)")
