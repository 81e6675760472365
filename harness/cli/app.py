"""The ``harness`` command: one module per command group, one error handler for all of them.

    harness quickstart                                   the main job: corpora, then studies/quickstart.yaml
    harness study run STUDY.yaml [a.b=v ...]             run every cell not done yet (--dry-run: list them;
                                                         --launcher slurm: one SLURM job array)
    harness study status STUDY.yaml                      cells done / running / queued / failed, SLURM jobs, logs
    harness study report STUDY.yaml                      the HTML report: figures, tables with CIs, paper numbers
    harness study search STUDY.yaml [--workers N]        the study's Optuna search, every trial an MLflow run
                                                         (--launcher slurm: the workers as SLURM array tasks)
    harness study dashboard STUDY.yaml                   optuna-dashboard on the search's storage
    harness train [CONFIG] [a.b=v ...] [--out DIR]       one run
    harness eval RUN_DIR [--split NAME=MANIFEST ...]     decode splits with a trained run, WER by two normalisers
    harness transcribe RUN_DIR AUDIO...                  transcribe files with a trained run (or an exported folder)
    harness export RUN_DIR OUT_DIR                       a folder transformers loads, with a model card
    harness data synth | librispeech ROOT | subset | lhotse   JSONL manifests (and Lhotse's, both ways)
    harness packs list | install | convert | verify      the offline model packs
    harness bench                                        training and decoding, ours against the reference settings
    harness gpu-check                                    the CUDA path at the paper's sizes (a reduced mode on CPU)
    harness ui                                           the MLflow UI for the study store

``harness report``, ``harness search`` and ``harness dashboard`` (the spellings before ``study``
held them) still work. Any error ends in one line on stderr and a non-zero exit (``harness --debug
...`` shows the traceback instead of writing it to a log file): see :mod:`harness.cli.common`.
"""
from __future__ import annotations

import copy
import logging
import os
import sys

import click

# Quiet the libraries' chatter before they are imported by the commands.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from harness.cli.common import HarnessGroup  # noqa: E402
from harness.cli.data import data  # noqa: E402
from harness.cli.gpu_check import gpu_check_command  # noqa: E402
from harness.cli.packs import packs  # noqa: E402
from harness.cli.runs import eval_cmd, export, train, transcribe  # noqa: E402
from harness.cli.search import dashboard_command, search_command  # noqa: E402
from harness.cli.study import quickstart, report, study  # noqa: E402
from harness.cli.tools import bench, ui  # noqa: E402


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


@click.group(cls=HarnessGroup)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--debug", is_flag=True,
              help="Show the full traceback of an unexpected error (default: one line, the traceback in a log file).")
def main(verbose: bool, debug: bool) -> None:  # noqa: ARG001 - debug is read by HarnessGroup
    """SLAM-ASR ablation harness: speech encoder -> projector -> LLM."""
    _setup_logging(verbose)


def _alias(command: click.Command) -> click.Command:
    """The same command under its old top-level name, left out of ``--help``."""
    alias = copy.copy(command)
    alias.hidden = True
    return alias


study.add_command(report, "report")
study.add_command(search_command, "search")
study.add_command(dashboard_command, "dashboard")
for command in (quickstart, study, train, eval_cmd, transcribe, export, data, packs, bench, gpu_check_command, ui):
    main.add_command(command)
for command in (report, search_command, dashboard_command):
    main.add_command(_alias(command))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
