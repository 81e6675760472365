"""Pieces shared by the ``harness`` command modules.

Every error a command meets ends in one line on stderr and a non-zero exit (:func:`user_errors`):
the project's own error types (they name the file, line or key already) as they are, anything
else as ``<Type>: <message> (details: <log file>)`` with the traceback in that log file, or shown
in full with ``harness --debug`` / ``HARNESS_DEBUG=1``. Ctrl-C (or SIGTERM turned into it) is one
line and exit code 130. :func:`run_server` runs a server program as a child that dies with us.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import click

MAX_MESSAGE = 1000  # characters of an error shown on its line; the log file has all of it
_HELP_SHOWN = getattr(click.exceptions, "NoArgsIsHelpError", ())  # a group called bare shows its help (click >= 8.2)


class HarnessError(click.ClickException):
    """A user-facing error: printed as one clear line, exit code 1 (or ``exit_code``)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def format_message(self) -> str:
        return one_line(self.message)


def one_line(text: str) -> str:
    """``text`` on one line: its non-blank lines joined by "; ", cut at MAX_MESSAGE characters."""
    joined = "; ".join(s.strip() for s in str(text).splitlines() if s.strip())
    return joined if len(joined) <= MAX_MESSAGE else joined[: MAX_MESSAGE - 3] + "..."


def known_errors() -> tuple[type[BaseException], ...]:
    """The error types whose message alone says what is wrong (file, line, key, what was expected)."""
    from harness.config import ConfigError
    from harness.data.audio import AudioError
    from harness.data.librispeech import LibriSpeechError
    from harness.data.manifest import ManifestError
    from harness.models.sources import ModelLoadError
    from harness.registry import RegistryError

    return (ConfigError, ModelLoadError, RegistryError, ManifestError, AudioError, LibriSpeechError,
            FileNotFoundError, ConnectionError)


def error_log_dir() -> Path:
    """Where tracebacks go: ``$HARNESS_LOG_DIR``, else ``<temp dir>/slam-harness-<user id>``."""
    if os.environ.get("HARNESS_LOG_DIR"):
        return Path(os.environ["HARNESS_LOG_DIR"])
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"slam-harness-{uid}"


def write_error_log(exc: BaseException) -> Path:
    """Write the command line and ``exc``'s traceback to a new file in :func:`error_log_dir`; its path."""
    folder = error_log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"harness-error-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    path.write_text(f"command: {' '.join(sys.argv)}\ncwd: {os.getcwd()}\n\n" + "".join(traceback.format_exception(exc)),
                    encoding="utf-8")
    return path


def as_user_error(exc: Exception) -> HarnessError:
    """``exc`` as one line: a known error as it is, any other with its type and where its traceback went."""
    if isinstance(exc, known_errors()):
        return HarnessError(str(exc) or type(exc).__name__)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        details = f"details: {write_error_log(exc)}"
    except OSError as log_error:  # e.g. the disk that is full holds the log folder too
        details = f"no log written: {log_error}; run with --debug for the traceback"
    return HarnessError(f"{one_line(message)[: MAX_MESSAGE - 200]} ({details})")


def debug_requested() -> bool:
    """``harness --debug`` or ``HARNESS_DEBUG=1``: show tracebacks instead of one line."""
    if os.environ.get("HARNESS_DEBUG", "") not in ("", "0"):
        return True
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn whatever a command raises into one line and a non-zero exit (see the module docstring).

    Click's own exceptions and ``SystemExit`` pass through, a usage error shortened to its one line."""
    try:
        yield
    except _HELP_SHOWN:
        raise
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        raise HarnessError(e.format_message() + hint, exit_code=e.exit_code) from e
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except KeyboardInterrupt as e:
        click.echo(f"\nInterrupted{f' ({e})' if str(e) else ''}: stopped.", err=True)
        raise click.exceptions.Exit(130) from e
    except Exception as e:
        if debug_requested() or (isinstance(e, OSError) and e.errno == errno.EPIPE):
            raise
        raise as_user_error(e) from e


def friendly(fn):
    """Run a command under :func:`user_errors` (for commands also used outside the ``harness`` group)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper


class HarnessGroup(click.Group):
    """A click group whose every command, however deeply nested, runs under :func:`user_errors`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with user_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        with user_errors():
            sigterm_as_interrupt()
            return super().invoke(ctx)


def sigterm_as_interrupt() -> None:
    """SIGTERM stops a command like Ctrl-C: a trainer writes a checkpoint, pools and servers are taken
    down, and the command ends in one "Interrupted" line with exit code 130 (not a silent death by the
    signal that leaves worker processes behind). See :func:`harness.interrupts.install`."""
    from harness import interrupts

    interrupts.install()


# ------------------------------------------------------------------------------------- numbers


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``inf`` and ``nan`` (FloatRange lets them through)."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


POSITIVE_INT = click.IntRange(min=1)
COUNT = click.IntRange(min=0)
PORT = click.IntRange(1, 65535)
POSITIVE_SECONDS = FiniteFloatRange(min=0, min_open=True)


# ------------------------------------------------------------------------------------- servers


def ensure_port_free(host: str, port: int, program: str) -> None:
    """Fail with one line when another server listens on ``host:port``, or no address of ``host`` can be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise HarnessError(f"--host {host}: cannot resolve the address ({e})") from e
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no conflict
            try:
                s.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise HarnessError(f"{host}:{port} is already in use (another server listens there); "
                                       f"{program} not started. Pick another --port.") from e
                errors.append(e)
    if len(errors) == len(infos):  # e.g. an address of another machine (IPv6 off: only that family fails)
        raise HarnessError(f"{host}:{port} cannot be bound ({errors[0].strerror}); {program} not started.")


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


def _wait_for(child: subprocess.Popen, received: list[int], grace_s: float) -> int:
    """The child's exit code; after a forwarded signal it has ``grace_s`` seconds, then it is killed."""
    deadline = None
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if received and deadline is None:
            deadline = time.monotonic() + grace_s
        if deadline is not None and time.monotonic() > deadline:
            _signal_group(child, signal.SIGKILL)


def run_server(cmd: list[str], *, program: str, grace_s: float = 10.0) -> None:
    """Run the server ``cmd`` in its own process group until it ends; SIGTERM / SIGINT to us go to the
    whole group (the server and its workers), which is killed if still there ``grace_s`` seconds later.
    Stopped by a signal: returns; ending on its own with a non-zero code: HarnessError."""
    child = subprocess.Popen(cmd, start_new_session=True)  # Ctrl-C reaches it through us only
    received: list[int] = []

    def forward(signum, frame):  # noqa: ARG001
        received.append(signum)
        _signal_group(child, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = _wait_for(child, received, grace_s)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:  # an error of ours while waiting: do not leave the server behind
            _signal_group(child, signal.SIGKILL)
            child.wait()
        _signal_group(child, signal.SIGKILL)  # workers that outlived the server
    if received:
        click.echo(f"{program} stopped.", err=True)
    elif code != 0:
        raise HarnessError(f"{program} exited with code {code} (its output is above)")


def script_main(main: Callable[[], None]) -> None:
    """Run a ``python -m ...`` script's ``main`` under the rules of the ``harness`` command: one line
    per error on stderr and a non-zero exit, the traceback in a log file (or shown with ``--debug``)."""
    try:
        with user_errors():
            main()
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code) from None
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None


tracking_option = click.option(
    "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)."
)
"""The ``--tracking-uri`` option every command that reads or writes the MLflow store takes."""


def slurm_options(fn):
    """``--launcher`` and the SLURM request options shared by ``study run`` and ``study search``."""
    opts = [
        click.option("--launcher", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
                     help="local: run here; slurm: submit a job array (one task per pending cell, or per search worker)."),
        click.option("--partition", default=None, help="SLURM partition (default: the cluster's default)."),
        click.option("--gpus-per-cell", type=click.IntRange(min=0), default=0, show_default=True,
                     help="GPUs each task requests (--gpus-per-node)."),
        click.option("--cpus-per-cell", type=POSITIVE_INT, default=None,
                     help="CPUs each task requests (--cpus-per-task); torch uses that many threads."),
        click.option("--mem", default=None, help="Memory each task requests, in SLURM's format (16G, 64000M)."),
        click.option("--time", "time_limit", default="1-00:00:00", show_default=True,
                     help="Time limit of each task (SLURM format); warned 90 s before, it checkpoints and is requeued."),
        click.option("--max-parallel", type=POSITIVE_INT, default=None, help="At most this many tasks at once."),
        click.option("--slurm", "slurm_extra", multiple=True, metavar="NAME=VALUE",
                     help="Any other sbatch option, e.g. --slurm account=speech --slurm qos=high (repeatable)."),
        click.option("--slurm-logs", default="slurm-logs", show_default=True,
                     help="Folder for each task's stdout/stderr (on a filesystem the nodes share)."),
        click.option("--wait", is_flag=True, help="With --launcher slurm: wait until every task has ended."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def make_slurm_options(partition, gpus_per_cell, cpus_per_cell, mem, time_limit, max_parallel, slurm_extra, slurm_logs,
                       procs_per_cell=None):
    """The :class:`~harness.experiments.slurm.SlurmOptions` the command line asked for (bad values: one line)."""
    from harness.experiments.slurm import SlurmOptions, parse_extra, parse_time

    return SlurmOptions(partition=partition, gpus_per_cell=gpus_per_cell, cpus_per_cell=cpus_per_cell, mem=mem,
                        time_min=parse_time(time_limit), max_parallel=max_parallel, extra=parse_extra(slurm_extra),
                        logs=slurm_logs, procs_per_cell=procs_per_cell)
