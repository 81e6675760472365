"""The `harness` command under bad input: every error ends in one line and a non-zero exit, nothing is
silently wrong, no server outlives the command that started it (docs/reliability.md).

Real processes of `.venv/bin/harness`, real signals, real ports, real LibriSpeech audio, a real
`mlflow ui`; the few parse-time checks of numbers run through click's CliRunner on the real group.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from harness.cli import main
from harness.data.manifest import Utterance, write_manifest

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT.parent / "shared" / "data" / "librispeech-mini"
_ENTRY = Path(sys.executable).with_name("harness")
HARNESS = [str(_ENTRY)] if _ENTRY.exists() else [sys.executable, "-m", "harness.cli"]
LOG_RECORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.-]+: ")
TINY = ("encoder.name=tiny:whisper", "llm.name=tiny:llama", "adapter.hidden=64", "train.device=cpu")


# ------------------------------------------------------------------------------------------ helpers


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HARNESS_CACHE": str(tmp / "cache"), "HARNESS_LOG_DIR": str(tmp / "logs"),
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def harness(tmp: Path, *args: str, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], cwd=tmp, env=kwargs.pop("env", None) or _env(tmp), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def user_lines(stderr: str) -> list[str]:
    """What the command itself says on stderr: the non-blank lines that are not log records."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_RECORD.match(line)]


def one_line(proc: subprocess.CompletedProcess, *fragments: str, prefix: str = "Error: ") -> str:
    """The single line a failed command printed (asserting there is exactly one, and no traceback)."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = user_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def _kill_all(procs: list[psutil.Process]) -> None:
    """Kill processes this test started (directly or through harness), by their ids."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def real_utts():
    from harness.data.librispeech import read_librispeech

    if not (MINI / "LibriSpeech").is_dir():
        pytest.skip(f"real LibriSpeech sample not found at {MINI}")
    return sorted(read_librispeech(MINI, "dev-clean"), key=lambda u: u.duration)


@pytest.fixture
def manifests(tmp_path: Path, real_utts) -> tuple[str, ...]:
    """Overrides pointing a tiny run at two short real utterances (train) and one (dev, test)."""
    write_manifest(tmp_path / "train.jsonl", real_utts[:2])
    write_manifest(tmp_path / "dev.jsonl", real_utts[:1])
    return (*TINY, f"data.train={tmp_path / 'train.jsonl'}", f"data.dev={tmp_path / 'dev.jsonl'}",
            f"data.test={{mini: {tmp_path / 'dev.jsonl'}}}", "train.batch_size=2", "train.warmup_steps=0",
            "train.eval_every=0", "decode.max_new_tokens=4")


def tiny_study(tmp: Path, name: str = "tiny") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        base:
          data: {{train: {tmp}/train.jsonl, dev: {tmp}/dev.jsonl, test: {{dev: {tmp}/dev.jsonl}}}}
          encoder: {{name: "tiny:whisper"}}
          llm: {{name: "tiny:llama"}}
          adapter: {{hidden: 64}}
          train: {{max_steps: 2, device: cpu}}
        """))
    return path


# ------------------------------------------------------------------ 1. one line, never a traceback


@pytest.mark.parametrize("fault", ["diverged", "scan-stop"])
def test_an_error_during_training_is_one_line_and_the_traceback_goes_to_a_log(tmp_path: Path, manifests, real_utts,
                                                                             fault: str) -> None:
    """`harness train` whose run fails after it started: the loss turns NaN (TrainingDiverged) or the
    dataset scan finds a missing file under data.on_bad_audio=stop (ValueError). The old CLI caught
    only the project's config/model/manifest error types, so both reached the user as a Python
    traceback. Now: one line naming the error, its message and the log file holding the traceback."""
    if fault == "diverged":
        extra, expected = ("train.lr=1e30", "train.clip=null"), "TrainingDiverged: loss is nan at step 2"
    else:
        missing = Utterance("gone", str(tmp_path / "gone.flac"), "A MISSING FILE", 2.0)
        write_manifest(tmp_path / "train.jsonl", [*real_utts[:2], missing])
        extra, expected = ("data.on_bad_audio=stop",), "ValueError: train: 1 bad audio files (data.on_bad_audio=stop)"
    proc = harness(tmp_path, "train", *manifests, "train.max_steps=3", *extra, "--out", str(tmp_path / "run"),
                   "--no-progress")
    assert proc.returncode == 1
    line = one_line(proc, expected)
    log = Path(re.search(r"\(details: (.+)\)$", line).group(1))
    assert log.parent == tmp_path / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and expected.split(":")[0] in text and "train" in text


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """An unexpected error (a .tsv sentence file without a 'text' column: ValueError) is one line with
    a log file; `harness --debug` shows the whole traceback instead. The old CLI had no --debug (and
    printed the traceback always)."""
    (tmp_path / "sentences.tsv").write_text("words\tspeaker\nHELLO THERE MY FRIEND\t1\n")
    args = ("data", "synth", "--text", str(tmp_path / "sentences.tsv"), "--out", str(tmp_path / "synth"))
    one_line(harness(tmp_path, *args), "ValueError: ",
             "sentences.tsv:1: expected a tab-separated header with a 'text' column", "(details: ")
    debug = harness(tmp_path, "--debug", *args)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "load_sentences" in debug.stderr


def test_an_os_error_such_as_a_full_disk_is_one_line(tmp_path: Path, real_utts) -> None:
    """A write the OS refuses (here: the file-size limit, EFBIG, which a write meets like ENOSPC on a
    full disk) while `harness data subset` writes its manifest. The old CLI let the OSError out as a
    traceback."""
    import resource

    u = real_utts[0]
    write_manifest(tmp_path / "big.jsonl", [Utterance(f"u{i}", u.audio, "WORDS " * 40, u.duration) for i in range(300)])
    limit = 32 * 1024  # the new manifest is ~100 KiB; a traceback log fits under the limit

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = harness(tmp_path, "data", "subset", str(tmp_path / "big.jsonl"), str(tmp_path / "out.jsonl"), "--n", "300",
                   preexec_fn=limited, restore_signals=False)
    assert proc.returncode == 1
    one_line(proc, "OSError: [Errno 27] File too large", "(details: ")
    assert not (tmp_path / "out.jsonl").exists() and not list(tmp_path.glob(".out.jsonl.*"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_command_says_so_in_one_line_and_exits_130(tmp_path: Path, manifests, signum: int) -> None:
    """Ctrl-C (SIGINT) or SIGTERM during `harness train`: the old CLI ended in click's "Aborted!" and
    exit code 1, like any failure; now one line and 130, the code of an interrupted command."""
    proc = subprocess.Popen([*HARNESS, "train", *manifests, "train.max_steps=100000", "--out", str(tmp_path / "run"),
                             "--no-progress"], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("run ")  # printed just before the SIGTERM handler is set
        time.sleep(2)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    one_line(subprocess.CompletedProcess(proc.args, 130, stdout, stderr), "stopped", prefix="Interrupted")


@pytest.mark.parametrize("args, fragments, code", [
    (("eval", "no-such-run"), ("Invalid value for 'RUN_DIR': Directory 'no-such-run' does not exist",
                               "(see 'harness eval --help')"), 2),
    (("eval", "."), ("config.yaml",), 1),  # a folder that is not a run
    (("no-such-command",), ("No such command 'no-such-command'",), 2),
    (("train", "--no-such-option"), ("No such option '--no-such-option'",), 2),
])
def test_usage_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], fragments: tuple[str, ...],
                                   code: int) -> None:
    """A missing run folder, a folder that is no run, an unknown command or option: the old CLI
    printed click's usage block (Usage:, Try ..., blank line, Error:); now one line, exit 2 for usage."""
    proc = harness(tmp_path, *args)
    assert proc.returncode == code
    one_line(proc, *fragments)


# ---------------------------------------------------------------------------- 2. every number


NUMBERS = [
    ("--claim-timeout", ["study", "run", "STUDY", "--dry-run", "--claim-timeout", "0"]),
    ("--claim-timeout", ["study", "run", "STUDY", "--dry-run", "--claim-timeout", "inf"]),
    ("--claim-timeout", ["study", "run", "STUDY", "--dry-run", "--claim-timeout", "nan"]),
    ("--claim-timeout", ["study", "run", "STUDY", "--dry-run", "--claim-timeout", "-5"]),
    ("--timeout", ["search", "--timeout", "inf", "missing.yaml"]),
    ("--timeout", ["search", "--timeout", "0", "missing.yaml"]),
    ("--n-trials", ["search", "--n-trials", "0", "missing.yaml"]),
    ("--port", ["dashboard", "--port", "0", "missing.yaml"]),
    ("--port", ["ui", "--port", "70000"]),
    ("--n-train", ["data", "synth", "--n-train", "0", "--text", "missing.txt"]),
    ("--n-dev", ["data", "synth", "--n-dev", "-1", "--text", "missing.txt"]),
    ("--workers", ["data", "synth", "--workers", "0", "--text", "missing.txt"]),
    ("--seed", ["data", "synth", "--seed", "-1", "--text", "missing.txt"]),
    ("--n", ["data", "subset", "--n", "0", "missing.jsonl", "out.jsonl"]),
    ("--warmup", ["bench", "--warmup", "-1", "--steps", "3", "--train", "missing/train.jsonl"]),
    ("--steps", ["bench", "--steps", "0", "--warmup", "0", "--train", "missing/train.jsonl"]),
    ("--beam", ["eval", "--beam", "0", "."]),
    ("--limit", ["packs", "verify", "--limit", "0", "no-such-pack"]),
    ("--budget-s", ["gpu-check", "--budget-s", "inf", "--sections", "nosuch", "--out", "gpu"]),
    ("--budget-s", ["gpu-check", "--budget-s", "0", "--sections", "nosuch", "--out", "gpu"]),
    ("--sections", ["gpu-check", "--sections", "nosuch", "--out", "gpu"]),  # ran nothing and exited 0
    ("--n-train", ["quickstart", "--n-train", "0", "--study", "missing.yaml"]),
    ("--n-eval", ["quickstart", "--n-eval", "0", "--study", "missing.yaml"]),
]


@pytest.mark.parametrize("option, args", NUMBERS, ids=[f"{a[0]} {o}={a[a.index(o) + 1]}" for o, a in NUMBERS])
def test_every_number_is_range_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str,
                                       args: list[str]) -> None:
    """Each numeric option has a range (positive where zero makes no sense, finite: no inf or nan).
    The old CLI took `--claim-timeout 0` (the heartbeat thread then busy-looped), inf, nan and
    negative counts; the arguments after the bad number here fail only later, inside the command,
    so the old CLI failed on them instead of on the number (or, for the study, ran)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HARNESS_LOG_DIR", str(tmp_path / "logs"))
    args = [str(tiny_study(tmp_path)) if a == "STUDY" else a for a in args]
    result = CliRunner().invoke(main, [*args, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
                                if args[0] == "study" else args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output, result.output


# ------------------------------------------------------------------------------------ 3. servers


def _stand_in_dashboard(tmp: Path, *, ignore_sigterm: bool = False) -> dict[str, str]:
    """An `optuna-dashboard` on PATH (unless the real one is installed beside Python): a real server
    process that starts a worker process listening on --port, as gunicorn-style servers do, and
    writes a marker when it starts."""
    if Path(sys.executable).with_name("optuna-dashboard").exists():
        return _env(tmp)
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_sigterm else ""
    (tmp / "bin").mkdir()
    worker = tmp / "bin" / "worker.py"
    worker.write_text(f"import signal, socket, sys\n{ignore}"
                      "server = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
                      "while True:\n    server.accept()[0].close()\n")
    script = tmp / "bin" / "optuna-dashboard"
    script.write_text(f"#!{sys.executable}\nimport pathlib, signal, subprocess, sys\n{ignore}"
                      f"pathlib.Path({str(tmp / 'started')!r}).write_text('yes')\n"
                      f"port = sys.argv[sys.argv.index('--port') + 1]\n"
                      f"sys.exit(subprocess.call([sys.executable, {str(worker)!r}, port]))\n")
    script.chmod(0o755)
    return _env(tmp, PATH=f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("program", ["ui", "dashboard"])
def test_a_taken_port_is_refused(tmp_path: Path, program: str) -> None:
    """Another server already listens on the port. The old `harness ui` printed "MLflow UI ... at
    http://127.0.0.1:PORT" (the other server's address) and exited 0 after mlflow failed to bind;
    now it checks the port first, starts nothing and fails in one line."""
    tiny_study(tmp_path)
    env = _stand_in_dashboard(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        args = (["ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"] if program == "ui" else
                ["dashboard", str(tmp_path / "tiny.yaml"), "--storage", f"sqlite:///{tmp_path}/optuna.db"])
        proc = harness(tmp_path, *args, "--port", str(port), env=env, timeout=60)
    assert proc.returncode == 1
    one_line(proc, f"127.0.0.1:{port} is already in use", "not started")
    assert "http://" not in proc.stdout and not (tmp_path / "started").exists()


def _start_and_stop(cmd: list[str], tmp: Path, env: dict[str, str], port: int, signum: int, *, ready,
                    stop_within: float) -> tuple[int, str, float]:
    """Start `harness ...` serving on ``port``; once ``ready()``, send ``signum`` to harness alone and
    assert the port stops listening within ``stop_within`` s and every process it started is gone.
    Returns harness's exit code, its stderr and the seconds from the signal to the closed port."""
    with open(tmp / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err)
    started: list[psutil.Process] = []
    try:
        wait_until(ready, 300, f"port {port} answers", proc)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert started
        proc.send_signal(signum)
        sent = time.time()
        wait_until(lambda: not listening(port), stop_within, f"port {port} is closed after signal {signum}")
        closed = time.time() - sent
        proc.wait(timeout=stop_within)
        _, alive = psutil.wait_procs(started, timeout=5)
        assert not alive, f"still running after harness ended: {alive}"
    finally:
        proc.kill()
        _kill_all(started)
    return proc.returncode, (tmp / "stderr.txt").read_text(), closed


def test_stopping_harness_ui_stops_the_mlflow_server(tmp_path: Path) -> None:
    """SIGTERM to `harness ui`: the old command died and left the MLflow server it had started (its
    uvicorn workers and job consumers) listening; now the signal goes to the server's whole process
    group, which is killed if it is not down after a 10-s grace, and the command exits 0. (Ctrl-C's
    SIGINT takes the same path: see the dashboard test.)"""
    port = free_port()
    cmd = [*HARNESS, "ui", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--port", str(port)]

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
        except OSError:
            return False

    code, stderr, _ = _start_and_stop(cmd, tmp_path, _env(tmp_path), port, signal.SIGTERM, ready=ready, stop_within=30)
    assert code == 0 and "MLflow UI stopped." in stderr, stderr


@pytest.mark.parametrize("signum, ignores_sigterm",
                         [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)],
                         ids=["SIGTERM", "SIGINT", "SIGTERM-ignored"])
def test_stopping_harness_dashboard_stops_its_server_and_workers(tmp_path: Path, signum: int,
                                                                 ignores_sigterm: bool) -> None:
    """SIGTERM or SIGINT to `harness dashboard` (an optuna-dashboard stand-in with a worker process):
    the old command died (SIGTERM) or killed only its direct child (SIGINT) and left the worker
    listening. Now the group gets the signal, and a server that ignores it is killed after the
    10-s grace."""
    if Path(sys.executable).with_name("optuna-dashboard").exists():
        pytest.skip("the real optuna-dashboard is installed: this test uses its stand-in")
    tiny_study(tmp_path)
    env = _stand_in_dashboard(tmp_path, ignore_sigterm=ignores_sigterm)
    port = free_port()
    cmd = [*HARNESS, "dashboard", str(tmp_path / "tiny.yaml"), "--storage", f"sqlite:///{tmp_path}/optuna.db",
           "--port", str(port)]
    code, stderr, closed = _start_and_stop(cmd, tmp_path, env, port, signum, ready=lambda: listening(port),
                                           stop_within=25)
    assert code == 0 and "optuna-dashboard stopped." in stderr, stderr
    assert (closed >= 9) if ignores_sigterm else (closed < 9)  # killed after the grace / stopped at once


def test_a_server_that_fails_makes_harness_ui_fail(tmp_path: Path) -> None:
    """mlflow ui exits non-zero (a store URI it does not support): the old `harness ui` exited 0."""
    proc = harness(tmp_path, "ui", "--tracking-uri", "nosuch://store", "--port", str(free_port()), timeout=120)
    assert proc.returncode == 1
    assert user_lines(proc.stderr)[-1].startswith("Error: MLflow UI exited with code ")


# ------------------------------------------------------------------------- 4. nothing done, exit 0


@pytest.mark.parametrize("content", ["empty", "other"])
def test_data_librispeech_on_a_folder_that_is_not_librispeech(tmp_path: Path, content: str) -> None:
    """The old command found no split, wrote nothing and exited 0. Now one line: the folder, the
    layout expected, what the folder holds."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    if content == "other":
        (folder / "notes.txt").write_text("not speech")
        (folder / "audio").mkdir()
        (folder / "audio" / "a.flac").write_bytes(b"")
    proc = harness(tmp_path, "data", "librispeech", str(folder), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    found = "an empty folder" if content == "empty" else "found audio/, notes.txt"
    one_line(proc, f"{folder}: not a LibriSpeech tree", "<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt",
             found)
    assert not (tmp_path / "out").exists()


NO_DEV_OTHER = "split 'dev-other' not found; available: dev-clean, test-clean, train-clean-100"


@pytest.mark.parametrize("args, message", [
    (("--split", "dev-clean", "--split", "dev-other"), NO_DEV_OTHER),
    (("--combine", "both=dev-clean,dev-other"), NO_DEV_OTHER),
    (("--combine", "both="), "--combine 'both=': expected NAME=SPLIT,SPLIT,..."),
    (("--combine", "dev-clean=test-clean"), "dev-clean is also a split written here"),
])
def test_data_librispeech_bad_split_names_write_nothing(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    """An unknown --split (or a bad --combine): the old command wrote the manifests before it (here
    dev-clean.jsonl) and then raised LibriSpeechError as a traceback (not one of the caught types)."""
    if not (MINI / "LibriSpeech").is_dir():
        pytest.skip(f"real LibriSpeech sample not found at {MINI}")
    proc = harness(tmp_path, "data", "librispeech", str(MINI), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 1
    one_line(proc, message)
    assert not (tmp_path / "out").exists()


def test_data_librispeech_indexes_the_real_tree(tmp_path: Path) -> None:
    if not (MINI / "LibriSpeech").is_dir():
        pytest.skip(f"real LibriSpeech sample not found at {MINI}")
    proc = harness(tmp_path, "data", "librispeech", str(MINI), "--out", "out", "--combine", "eval=dev-clean,test-clean")
    assert proc.returncode == 0, proc.stderr
    from harness.data.manifest import read_manifest

    counts = {p.stem: len(read_manifest(p)) for p in (tmp_path / "out").glob("*.jsonl")}
    assert counts == {"dev-clean": 12, "test-clean": 9, "train-clean-100": 1, "eval": 21}


def test_data_subset_of_an_empty_manifest_is_an_error(tmp_path: Path) -> None:
    """The old command wrote an empty manifest and said "0 utterances" with exit 0."""
    (tmp_path / "empty.jsonl").write_text("")
    proc = harness(tmp_path, "data", "subset", str(tmp_path / "empty.jsonl"), str(tmp_path / "out.jsonl"), "--n", "5")
    assert proc.returncode == 1
    one_line(proc, f"{tmp_path / 'empty.jsonl'}: the manifest holds no utterances")
    assert not (tmp_path / "out.jsonl").exists()


def test_data_synth_without_usable_sentences_names_the_file(tmp_path: Path) -> None:
    """A sentence file with no usable sentence (all too short): the old message ("need 1400 distinct
    sentences ..., only 0 given") did not say which file or why."""
    (tmp_path / "short.txt").write_text("Yes. No. Hello there.\n")
    proc = harness(tmp_path, "data", "synth", "--text", str(tmp_path / "short.txt"), "--out", str(tmp_path / "synth"))
    assert proc.returncode == 1
    one_line(proc, f"no usable sentences in {tmp_path / 'short.txt'}", "4-25 words")
    assert not (tmp_path / "synth").exists()


@pytest.fixture(scope="module")
def run_without_tests(tmp_path_factory, real_utts) -> Path:
    """A tiny run trained one step whose config names no test split."""
    from harness.config import load_config
    from harness.run.trainer import run_training

    tmp = tmp_path_factory.mktemp("run")
    write_manifest(tmp / "train.jsonl", real_utts[:2])
    m = tmp / "train.jsonl"
    cfg = load_config(None, [*TINY, f"data.train={m}", f"data.dev={m}", "data.test={}", "train.max_steps=1",
                             "train.eval_every=0", "train.warmup_steps=0", "decode.max_new_tokens=4", "data.scan=off"])
    with pytest.MonkeyPatch.context() as env:  # a module-scoped fixture: no function-scoped monkeypatch
        env.setenv("HARNESS_CACHE", str(tmp / "cache"))
        run_training(cfg, tmp / "run", progress=False)
    return tmp / "run"


def test_eval_with_nothing_to_evaluate_is_an_error(tmp_path: Path, run_without_tests: Path) -> None:
    """A run whose config has no test split, evaluated without --split: the old command printed
    nothing and exited 0. An empty --split manifest: it decoded nothing and printed a WER of nothing."""
    proc = harness(tmp_path, "eval", str(run_without_tests))
    assert proc.returncode == 1
    one_line(proc, "names no test split (data.test)", "--split NAME=MANIFEST")
    (tmp_path / "empty.jsonl").write_text("")
    proc = harness(tmp_path, "eval", str(run_without_tests), "--split", f"none={tmp_path / 'empty.jsonl'}")
    assert proc.returncode == 1
    one_line(proc, "split 'none' holds no utterances")


@pytest.mark.parametrize("module", ["analysis.emergence_table", "harness.bench.levers", "harness.bench.llms"])
def test_python_m_scripts_end_in_one_line_too(tmp_path: Path, librispeech_root: Path, module: str) -> None:
    """The ``python -m`` scripts let every error out as a traceback (a missing study file: a
    ConfigError traceback, exit 1 only because Python died of it)."""
    (tmp_path / "broken.jsonl").write_text('{"id": "a", "audio": "a.wav"\n')
    args = {"analysis.emergence_table": ["missing.yaml"], "harness.bench.levers": ["--train", "broken.jsonl"],
            "harness.bench.llms": ["pack:no-such-pack", "--librispeech", str(librispeech_root)]}[module]
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    one_line(proc)


def test_sigterm_to_data_synth_takes_its_workers_down(tmp_path: Path) -> None:
    """SIGTERM to `harness data synth --workers 2`: the old command died of the signal (exit -15,
    no word) and its process pool (spawned TTS workers) was left to finish or hang on its own; now
    it is one "Interrupted" line, exit 130, and no worker outlives it."""
    text = tmp_path / "sentences.txt"
    words = "red green blue small large quiet happy old young brave tired kind proud calm bright".split()
    nouns = "dog cat horse bird fox owl wolf bear deer goat lamb duck frog mouse hare".split()
    places = "river forest garden meadow village market harbour valley castle bridge hill farm lake road town".split()
    text.write_text("".join(f"The {w} {n} walked to the {p} this morning.\n" for w in words for n in nouns for p in places))
    proc = subprocess.Popen([*HARNESS, "data", "synth", "--text", str(text), "--out", str(tmp_path / "corpus"),
                             "--n-train", "2000", "--workers", "2"], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: list[psutil.Process] = []
    try:
        audio = tmp_path / "corpus" / "audio"
        wait_until(lambda: audio.is_dir() and any(p.is_file() for p in audio.rglob("*")), 300, "the first synthesized file", proc)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"still running after harness ended: {alive}"
    finally:
        proc.kill()
        _kill_all(workers)
    assert proc.returncode == 130
    said = "\n".join(line for line in stderr.splitlines() if "utt/s]" not in line)  # not the progress bar
    one_line(subprocess.CompletedProcess(proc.args, 130, stdout, said), "stopped", prefix="Interrupted")
