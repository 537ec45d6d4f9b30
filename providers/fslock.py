"""An exclusive flock(2) on a lock file: the store, indexes, extractions, the provisioner.

A lock file may be removed by its holder once what it guards is gone
(``remove_lock``): one per container or mount point would otherwise stay for
good. A process that opened the file before it went, and gets its lock after,
holds the lock of a file no one else will open: it finds the path naming
another file, or none, and opens the path again (``take_lock``). So two holders
are never at once, whoever removed what.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def take_lock(path: Path, wait: bool) -> int | None:
    """An fd of ``path`` (created if missing) holding its exclusive flock, or None when
    ``wait`` is False and another holds it. For a lock handed to another process (its
    fd inherited); the caller closes it. Else use the context managers below."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # EAGAIN/EWOULDBLOCK: someone holds it
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if same_file(fd, path):
            return fd
        os.close(fd)  # removed by its holder meanwhile: the lock is the path's file now


def same_file(fd: int, path: str | Path) -> bool:
    """Whether ``path`` still names the file open at ``fd`` (one a cleaner or a holder may
    have removed or replaced meanwhile)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def remove_lock(path: Path) -> None:
    """Remove the lock file ``path``, whose lock the caller holds and is done with."""
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def try_exclusive_lock(path: Path) -> Iterator[bool]:
    """``exclusive_lock`` without waiting: yields whether the lock was free (and is held)."""
    fd = take_lock(path, wait=False)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block.

    Blocks until the lock is free. The kernel drops it when the process dies,
    so a crash never leaves it held.
    """
    fd = take_lock(path, wait=True)
    assert fd is not None
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock_until(
    path: Path, deadline: float, error: Callable[[str], Exception], *, pause: float = 0.05
) -> Iterator[None]:
    """``exclusive_lock``, waiting no later than ``deadline`` (``time.monotonic``) for it.

    Polled every ``pause`` seconds, not blocking: a holder that hangs must
    not hang the caller past its deadline. Past it, raises ``error`` (an
    exception type, or any callable) made with a message naming ``path``.
    """
    while (fd := take_lock(path, wait=False)) is None:
        if time.monotonic() > deadline:
            raise error(f"{path} stayed locked: another start hangs")
        time.sleep(pause)
    try:
        yield
    finally:
        os.close(fd)
