"""``harness bench | ui``: measurements side by side, and the MLflow UI."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.common import COUNT, PORT, POSITIVE_INT, ensure_port_free, run_server, tracking_option
from harness.cli.data import SYNTH_CORPORA, make_corpus


@click.command()
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
        make_corpus(ctx, corpus)
    for path in (train_manifest, dev_manifest):
        if not Path(path).is_file():
            raise click.ClickException(f"manifest {path} not found (make the corpus with `harness quickstart` or `harness data synth`)")
    setup = BenchSetup(train=train_manifest, dev=dev_manifest, encoder=encoder, llm=llm, steps=steps, warmup=warmup,
                       device=device, workdir=str(Path(out) / "work"))
    result = run_bench(setup, out=out)
    click.echo(table(result))
    click.echo(f"written: {Path(out) / 'bench.json'}, {Path(out) / 'bench.md'}")


def experiment_links(uri: str, server: str) -> list[tuple[str, str]]:
    """(name, link) of each harness experiment in the store: its cells' view, charts open."""
    from harness.tracking.store import make_client
    from harness.tracking.ui import VIEW_TAG, experiment_url

    try:
        experiments = make_client(uri).search_experiments()
    except Exception:  # noqa: BLE001 - a store the UI cannot read says so itself once it starts
        return []
    return [(e.name, experiment_url(server, e.experiment_id)) for e in experiments if VIEW_TAG in e.tags]


@click.command()
@tracking_option
@click.option("--port", default=5000, show_default=True, type=PORT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told otherwise).")
def ui(tracking_uri: str | None, port: int, host: str) -> None:
    """Start the MLflow UI for the study store and print its address; it stops with this command."""
    from harness.tracking.store import tracking_uri as resolve_uri

    uri = resolve_uri(tracking_uri)
    ensure_port_free(host, port, "MLflow UI")
    click.echo(f"MLflow UI for {uri} at http://{host}:{port}  (Ctrl-C to stop)")
    for name, url in experiment_links(uri, f"http://{host}:{port}"):
        click.echo(f"  {name}: {url}")
    run_server([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)],
               program="MLflow UI")
