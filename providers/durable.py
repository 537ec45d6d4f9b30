"""What survives a power cut: a directory's names, a filesystem's written data.

``sync_directory(d)`` fsyncs a directory, so the names made, renamed or
removed in it last. ``sync_filesystem(path)`` writes back everything
written to the filesystem holding ``path`` (syncfs(2)): for a tree of
thousands of files made by code that writes them one by one (a layer
extracted, a copy rootfs), one call before the rename or record that
makes the tree trusted, rather than an fsync per file. Without it a crash
soon after can leave the tree's names with empty files, published as
complete.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)


def sync_directory(directory: Path) -> None:
    """fsync ``directory``, so the names made or renamed in it last across a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Write back all data written to the filesystem of ``path``; OSError if that fails."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"syncfs {path}: {os.strerror(number)}")
    finally:
        os.close(fd)
