"""The one way facegallery replaces a file: write a temporary file beside it, fsync, rename over it.

A reader sees the old file or the new one, never half of one. The temporary file is named
``.<name>.<random>.tmp`` in the destination's folder (a rename is only atomic within one filesystem), so the
gallery's sweep of ``.tmp`` names finds what a killed writer left behind. It is deleted on any error.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def write_atomic(dest: str | os.PathLike, write: Callable[[Path], T], *, mode: int | None = None) -> T:
    """Call ``write(tmp)`` to fill a temporary file, then make it ``dest`` atomically; returns what ``write``
    returned. ``mode``: the new file's permission bits (default: the old file's, else 0o644; ``mkstemp``
    alone would make it owner-only)."""
    dest = Path(dest)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(name)
    try:
        if mode is None:
            mode = dest.stat().st_mode & 0o777 if dest.exists() else 0o644
        os.fchmod(fd, mode)
        os.close(fd)
        fd = -1
        result = write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return result


def write_bytes_atomic(dest: str | os.PathLike, *chunks: bytes | memoryview) -> None:
    """:func:`write_atomic` for content already in memory."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)

    write_atomic(dest, write)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not every filesystem lets a directory be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
