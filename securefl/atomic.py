"""Replace a file whole or not at all: write a temporary file beside it, flush it to disk, rename.

``os.replace`` is atomic on POSIX and Windows when both paths are on one file system (the
temporary file is created in the target's folder for that reason), so a reader -- or a process
restarted after a kill at any instant -- sees either the previous complete file or the new
complete one, never a mixture or a truncated file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, replacing any previous file only once ``data`` is on disk.

    The temporary file (``.<name>.<random>.tmp`` in the same folder) is removed if anything fails
    before the rename, leaving the previous file untouched.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Flush the rename itself to disk (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


__all__ = ["write_atomically"]
