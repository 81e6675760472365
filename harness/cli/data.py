"""``harness data``: JSONL manifests (synthetic speech, LibriSpeech trees, subsets), and the synthetic corpora shipped studies read."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click

from harness.cli.common import COUNT, POSITIVE_INT, HarnessError


@click.group()
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


@data.command("lhotse")
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
def data_lhotse(source: str, out: str) -> None:
    """Convert between a Lhotse manifest and a JSONL manifest, either way.

    SOURCE a Lhotse CutSet or SupervisionSet (its RecordingSet beside it) -> OUT a JSONL manifest; SOURCE a
    JSONL manifest -> OUT a Lhotse CutSet (name it *.jsonl.gz). Studies read either kind as it is; this
    is for tools that read only one."""
    from harness.data.lhotse_manifests import lhotse_kind, write_lhotse
    from harness.data.manifest import read_manifest, write_manifest

    utts = read_manifest(source)
    if not utts:
        raise HarnessError(f"{source}: the manifest holds no utterances; nothing to convert")
    if lhotse_kind(source) is not None:
        write_manifest(Path(out), utts)
        click.echo(f"{len(utts)} utterances (Lhotse {lhotse_kind(source)}) -> {out} (JSONL manifest)")
    else:
        write_lhotse(utts, out)
        click.echo(f"{len(utts)} utterances -> {out} (Lhotse CutSet)")


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


def make_corpus(ctx, folder: str, *, n_train: int | None = None, n_eval: int | None = None, texts: tuple[str, ...] = ()) -> None:
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
