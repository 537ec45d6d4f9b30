"""What survives a power cut: a directory's names, a filesystem's written data.

``sync_directory(d)`` fsyncs a directory, so the names made, renamed or
removed in it last. ``written_back(path)`` writes back everything written
to the filesystem holding ``path`` (syncfs(2)) once its block is done, and
``sync_filesystem(path)`` at once: for a tree of thousands of files made by
code that writes them one by one (a layer extracted, a copy rootfs), one
call before the rename or record that makes the tree trusted, rather than
an fsync per file. Without it a crash soon after can leave the tree's
names with empty files, published as complete.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes


@functools.cache
def _libc() -> ctypes.CDLL:
    # Loaded by what writes trees back, not by every user of ``sync_directory`` (a
    # mount process's start).
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def sync_directory(directory: Path) -> None:
    """fsync ``directory``, so the names made or renamed in it last across a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def written_back(path: Path) -> Iterator[None]:
    """Write back, at the end of the block, everything written to the filesystem of the
    directory ``path`` (syncfs(2)); OSError if any of it failed to reach the disk.

    Opened first: the kernel reports to a descriptor the write-back errors that come
    after it was opened, so the block's own writes are covered, and so are those of
    code that wrote them file by file. ``path`` must be a directory its caller may
    read (a parent of what it writes, rather than a tree an image made). Nothing is
    written back when the block raises.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield
        if _libc().syncfs(fd) != 0:
            import ctypes

            number = ctypes.get_errno()
            raise OSError(number, f"syncfs {path}: {os.strerror(number)}")
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Write back now everything written to the filesystem of the directory ``path``."""
    with written_back(path):
        pass
