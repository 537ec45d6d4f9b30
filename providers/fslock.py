"""An exclusive flock(2) on a lock file: the store, indexes, extractions, the provisioner."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def try_exclusive_lock(path: Path) -> Iterator[bool]:
    """``exclusive_lock`` without waiting: yields whether the lock was free (and is held)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # EAGAIN/EWOULDBLOCK: someone holds it
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block.

    Blocks until the lock is free. The kernel drops it when the process dies,
    so a crash never leaves it held.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
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
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise error(f"{path} stayed locked: another start hangs") from None
                time.sleep(pause)
        yield
    finally:
        os.close(fd)
