"""Replacing a file so that no reader, and no crash, ever sees half of it."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def fsync_path(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Flush ``path``'s data (a file, or with ``directory=True`` a folder's entries) from the OS cache to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot fsync a folder; a file's data must get there
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file to; when the block ends without an error
    it takes ``path``'s place in one rename (readers see the old file or the whole new one), and on an
    error it is removed and ``path`` is left as it was. The name is unique to the process, so
    concurrent writers of one path never write into each other's file: the last rename wins.

    Durable too: the new file's data is fsync'ed before the rename and the folder after it, so after a
    power loss ``path`` is the old file or the whole new one, never an empty or partial file.
    ``durable=False`` skips both fsyncs, for files whose loss costs only a recomputation (the
    feature cache, which recomputes an entry it cannot read).

    Example::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with replacing(path) as tmp:
        ...     _ = tmp.write_text("whole")
        >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
        ('whole', ['a.txt'])
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)  # the data first: a rename that reaches the disk before it leaves an empty file
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent, directory=True)  # and the rename itself
    finally:
        tmp.unlink(missing_ok=True)
