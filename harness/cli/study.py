"""``harness study run | report | search | dashboard``, and ``harness quickstart`` (the main job)."""
from __future__ import annotations

from pathlib import Path

import click

from harness.cli.common import POSITIVE_INT, FiniteFloatRange, make_slurm_options, slurm_options, tracking_option
from harness.cli.data import SYNTH_CORPORA, make_corpus


@click.group()
def study() -> None:
    """Ablation grids from YAML, tracked in MLflow."""


def _print_rows(rows: list[dict[str, str]]) -> None:
    if not rows:
        click.echo("(no cells)")
        return
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    click.echo("  ".join(k.ljust(w) for k, w in widths.items()))
    for r in rows:
        click.echo("  ".join(str(r[k]).ljust(w) for k, w in widths.items()))


def _fmt_emergence(metrics: dict[str, float]) -> str:
    if "emergence_step" in metrics:
        return f"step {int(metrics['emergence_step'])}"
    return "no" if metrics.get("emerged") == 0 else "-"


@study.command("run")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the cells (hash, status, name) and run nothing; with "
              "--launcher slurm, the array and its sbatch options too.")
@click.option("--retry-failed", is_flag=True, help="Run cells that failed before again.")
@click.option("--claim-timeout", default=300.0, show_default=True, type=FiniteFloatRange(min=1.0),
              help="Seconds (>= 1) without a heartbeat after which another worker's RUNNING cell counts as abandoned.")
@click.option("--runs-root", default="runs", show_default=True, help="Folder for checkpoints and local outputs.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--cell", "cells", multiple=True, metavar="HASH|NAME",
              help="Run only this cell: a cell-hash prefix or a run name as --dry-run prints them (repeatable).")
@click.option("--procs-per-cell", type=POSITIVE_INT, default=None,
              help="Train each cell on N processes, data parallel (one per GPU; on CPUs over gloo). "
                   "Default: 1 here; with --launcher slurm one per --gpus-per-cell.")
@slurm_options
@tracking_option
def study_run(study_file, overrides, dry_run, retry_failed, claim_timeout, runs_root, no_progress, tracking_uri,
              cells=(), procs_per_cell=None, launcher="local", wait=False, **slurm) -> None:
    """Run every cell of STUDY_FILE that is not done yet (a.b=v OVERRIDES apply to its base)."""
    from harness.experiments.grid import run_study, study_table
    from harness.experiments.study import load_study

    st = load_study(study_file, overrides)
    only = _select_cells(st, cells) if cells else None
    if launcher == "slurm":
        if only is not None:
            raise click.UsageError("--cell runs cells here; with --launcher slurm every pending cell is submitted")
        _submit_study(st, overrides, make_slurm_options(**slurm, procs_per_cell=procs_per_cell), dry_run=dry_run, wait=wait, uri=tracking_uri,
                      runs_root=runs_root, retry_failed=retry_failed, claim_timeout=claim_timeout)
        return
    if dry_run:
        click.echo(f"study {st.name}: {len(st.cells)} cells")
        _print_rows(study_table(st, uri=tracking_uri))
        return
    _echo_link(st, tracking_uri)
    outcomes = run_study(st, uri=tracking_uri, runs_root=runs_root, retry_failed=retry_failed, progress=not no_progress,
                         claim_timeout=claim_timeout, only=only, procs_per_cell=procs_per_cell or 1)
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


def _echo_link(st, uri: str | None) -> None:
    """Where to watch the study when its store is an MLflow server (a SQLite store: `harness ui` prints it)."""
    from harness.tracking.store import experiment_id, make_client, tracking_uri
    from harness.tracking.ui import experiment_url

    uri = tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        click.echo(f"study {st.name}: {experiment_url(uri, experiment_id(make_client(uri), st.experiment))}")


def _select_cells(st, wanted: tuple[str, ...]) -> frozenset[str]:
    """The hashes of the cells that ``--cell`` names: each value a hash prefix (4+ characters; an older
    identity version's hash also names its cell) or a run name, matching exactly one cell."""
    chosen = set()
    for w in wanted:
        hits = [c for c in st.cells if c.name == w or
                (len(w) >= 4 and any(h.startswith(w) for h in (c.hash, *c.legacy_hashes.values())))]
        if len(hits) != 1:
            names = ", ".join(f"{c.hash[:12]} ({c.name})" for c in st.cells)
            what = "no cell" if not hits else f"{len(hits)} cells"
            raise click.BadParameter(f"{w!r} names {what} of {st.path}; expected one of: {names}", param_hint="--cell")
        chosen.add(hits[0].hash)
    return frozenset(chosen)


def _submit_study(st, overrides, opts, *, dry_run, wait, uri, runs_root, retry_failed, claim_timeout) -> None:
    from harness.experiments.slurm import pending_cells, submit_study

    cells = pending_cells(st, uri=uri, retry_failed=retry_failed, claim_timeout=claim_timeout)
    each = f"; {opts.ranks} training processes in each" if opts.ranks > 1 else ""
    click.echo(f"study {st.name}: {len(st.cells)} cells, {len(cells)} to submit (one SLURM array task each{each})")
    if dry_run:
        for i, c in enumerate(cells):
            click.echo(f"  task {i}: {c.hash[:12]}  {c.name}")
        if cells:
            click.echo("sbatch " + " ".join(opts.describe(st.name, len(cells))))
        return
    sub = submit_study(st, opts, overrides=tuple(overrides), uri=uri, runs_root=runs_root, retry_failed=retry_failed,
                       claim_timeout=claim_timeout)
    if not sub.job_ids:
        click.echo("nothing to submit: every cell is done (or running)")
        return
    click.echo(f"submitted {len(sub.job_ids)} tasks: {sub.job_ids[0].split('_')[0]}; logs in {sub.logs_dir}")
    click.echo(f"  harness study status {st.path}")
    if wait:
        states = sub.wait()
        click.echo("ended: " + ", ".join(f"{j} {s}" for j, s in states.items()))
        rows = _status_rows(st, uri, claim_timeout, sub.logs_dir)
        _print_rows(rows)
        if any(r["status"] != "done" for r in rows):
            raise SystemExit(1)


def _status_rows(st, uri, claim_timeout, logs_dir) -> list[dict[str, str]]:
    from harness.experiments.grid import study_status

    from harness.experiments.slurm import queue_states, submissions

    subs = submissions(Path(logs_dir))
    rows = study_status(st, uri=uri, claim_timeout=claim_timeout)
    states = queue_states([r["job"] or subs.get(r["cell_hash"], {}).get("job_id", "") for r in rows if
                           r["job"] or r["cell_hash"] in subs])
    out = []
    for r in rows:
        job = r["job"] or subs.get(r["cell_hash"], {}).get("job_id", "")
        status = r["status"]
        if status == "new" and job and states.get(job) in ("PENDING", "RUNNING", "CONFIGURING"):
            status = "queued"  # submitted, its task has not opened the cell's run yet
        out.append({"#": r["#"], "hash": r["hash"], "status": status, "run": r["run"],
                    "slurm job": f"{job} {states.get(job, '')}".strip() or "-",
                    "log": r["log"] if status in ("running", "failed", "interrupted") else ""})
    return out


@study.command("status")
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--claim-timeout", default=300.0, show_default=True, type=FiniteFloatRange(min=1.0),
              help="Seconds without a heartbeat after which a RUNNING cell counts as interrupted.")
@click.option("--slurm-logs", default="slurm-logs", show_default=True, help="The SLURM launcher's log folder.")
@tracking_option
def study_status_cmd(study_file, overrides, claim_timeout, slurm_logs, tracking_uri) -> None:
    """Cells done / running / queued / new / failed / interrupted, with SLURM job ids and log paths where there are."""
    from harness.experiments.study import load_study

    st = load_study(study_file, overrides)
    rows = _status_rows(st, tracking_uri, claim_timeout, Path(slurm_logs, st.name))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    click.echo(f"study {st.name}: {len(rows)} cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    _print_rows(rows)


@click.command()
@click.argument("study_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Folder (default: reports/<study name>).")
@tracking_option
def report(study_file: str, out: str | None, tracking_uri: str | None) -> None:
    """Write the study's HTML report (findings, figures, tables with CIs, paper numbers) and log it to MLflow.
    A study that declares findings also gets its findings table printed."""
    from analysis.report import write_report

    path = write_report(study_file, out_dir=out, tracking_uri=tracking_uri)
    findings = path.parent / "tables" / "findings.md"
    if findings.exists():
        click.echo(findings.read_text())
    click.echo(f"report: {path}")


def _manifests(cfg) -> list[str]:
    d = cfg.data
    return [d.train, d.dev, *d.test.values(), *d.optional_test.values()]


@click.command()
@click.option("--study", "study_file", default="studies/quickstart.yaml", show_default=True,
              type=click.Path(exists=True, dir_okay=False))
@click.option("--librispeech", default="../shared/data/librispeech-mini", show_default=True,
              help="LibriSpeech tree for the real-speech test split (skipped when absent).")
@click.option("--text", "texts", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Sentence source(s) for the synthetic corpus (default: the installed book text).")
@click.option("--n-train", type=POSITIVE_INT, default=None, help="Training utterances of a corpus it makes (default: the corpus's own, 800; 6,000 for data/synth-en).")
@click.option("--n-eval", type=POSITIVE_INT, default=None, help="Utterances in each of dev/test/test_unseen (default: 60).")
@tracking_option
@click.pass_context
def quickstart(ctx, study_file, librispeech, texts, n_train, n_eval, tracking_uri) -> None:
    """The main job: synthesize the corpora the study uses, index real LibriSpeech, run the study."""
    from harness.experiments.study import load_study

    study = load_study(study_file)
    used = {Path(p).parent.as_posix() for c in study.cells for p in _manifests(c.config)}
    for folder in SYNTH_CORPORA:
        if folder in used and not Path(folder, "train.jsonl").exists():
            make_corpus(ctx, folder, n_train=n_train, n_eval=n_eval, texts=texts)
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
