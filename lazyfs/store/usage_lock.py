"""One store-wide reader/writer lock between work that adds uses and image GC.

A provision decides that a blob, an extracted layer or an index is present
and later builds a rootfs on it; only once its container's record is
written does image GC see that the container uses them.  In between, a GC
pass in another process would take them away.  So such work holds
``locks/gc.lock`` shared (``in_use``, ``in_use_async``) from its first look
at the store until its record is written, and a GC pass holds it
exclusively (``collecting``): provisions run side by side, a GC pass waits
for those under way and they wait for it.

flock(2): the kernel drops a lock whose process died, so a killed provision
or GC pass never leaves the store locked.  The async forms poll a
non-blocking flock between trio sleeps, so Ctrl-C or SIGTERM end a wait at
once (``lazyfs.store.disk.locked_async`` says why not a thread).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import trio

LOCK_NAME = "gc.lock"
# How often a wait for the lock looks again, at most.
_POLL_MAX = 0.25


def lock_path(store_root: Path) -> Path:
    return store_root / "locks" / LOCK_NAME


@contextlib.contextmanager
def _flock(store_root: Path, kind: int) -> Iterator[None]:
    fd = os.open(lock_path(store_root), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)


def in_use(store_root: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the store shared: no GC pass runs meanwhile. Blocks while one does."""
    return _flock(store_root, fcntl.LOCK_SH)


def collecting(store_root: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the store for a GC pass: waits until no ``in_use`` holder is left."""
    return _flock(store_root, fcntl.LOCK_EX)


@contextlib.asynccontextmanager
async def in_use_async(store_root: Path) -> AsyncIterator[None]:
    """``in_use`` for trio code: the wait yields, and a cancellation ends it."""
    fd = os.open(lock_path(store_root), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # a GC pass holds it
                await trio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)
        yield
    finally:
        os.close(fd)
