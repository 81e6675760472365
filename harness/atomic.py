"""Replacing a file so that no reader, and no crash, ever sees half of it."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file to; when the block ends without an error
    it takes ``path``'s place in one rename (readers see the old file or the whole new one), and on an
    error it is removed and ``path`` is left as it was. The name is unique to the process, so
    concurrent writers of one path never write into each other's file: the last rename wins.

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
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
