"""`harness.atomic.replacing`: a file is replaced whole or not at all."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.atomic import replacing


def test_the_new_file_takes_the_place_of_the_old_one_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    with replacing(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"  # nothing changes until the block ends
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def _strace(script: str, tmp_path: Path) -> list[str]:
    """The file system calls a real Python process makes running ``script`` (strace), one per line."""
    import shutil
    import subprocess
    import sys

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    log = tmp_path / "strace.txt"
    calls = "trace=open,openat,fsync,fdatasync,rename,renameat,renameat2"
    proc = subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e", calls, sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines()


def test_the_new_file_and_the_rename_are_flushed_to_disk(tmp_path: Path) -> None:
    """After a power loss a renamed file whose data was never fsync'ed can be empty (the rename
    reaches the disk before the data). The old `replacing` renamed without any fsync; now the
    temporary file's data is fsync'ed before the rename and the folder (the rename) after it.
    Observed from outside: the system calls of a real process, traced by strace."""
    path = tmp_path / "out" / "state.json"
    path.parent.mkdir()
    script = (f"from harness.atomic import replacing\n"
              f"with replacing({str(path)!r}) as tmp:\n    tmp.write_text('whole')\n")
    fds: dict[str, str] = {}  # open descriptor -> path
    events: list[tuple[str, str]] = []
    for line in _strace(script, tmp_path):
        if m := re.search(r'open(?:at)?\((?:AT_FDCWD, )?"([^"]+)".*\)\s+=\s+(\d+)$', line):
            fds[m.group(2)] = m.group(1)
        elif m := re.search(r"f(?:data)?sync\((\d+)\)\s+=\s+0", line):
            events.append(("fsync", fds.get(m.group(1), "?")))
        elif m := re.search(r'rename(?:at2?)?\((?:AT_FDCWD, )?"([^"]+)", (?:AT_FDCWD, )?"([^"]+)"', line):
            events.append(("rename", m.group(2)))
    tmp_name = str(path.with_name(f".{path.name}."))
    mine = [(kind, p) for kind, p in events if p.startswith(tmp_name) or p in (str(path), str(path.parent))]
    assert [(k, p if not p.startswith(tmp_name) else "tmp") for k, p in mine] == [
        ("fsync", "tmp"), ("rename", str(path)), ("fsync", str(path.parent))], events
    assert path.read_text() == "whole" and [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_a_block_that_writes_nothing_leaves_the_old_file(tmp_path: Path) -> None:
    """Nothing written to the temporary path: an error (there is nothing to flush or rename), and the
    old file stays."""
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(FileNotFoundError), replacing(path):
        pass
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
