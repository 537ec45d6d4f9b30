"""Atomic file writes: a file appears at its name whole, or not at all.

The one way lazyfs writes a file that is trusted by its name:

1. the bytes go to a new temporary file (``mkstemp``: a fresh name, mode
   0600 until step 3) in a directory on the same filesystem as the target:
   the target's own directory unless the caller names another (the
   store's ``tmp/``, a mount's work directory);
2. the file is flushed and fsynced, so the rename cannot publish a name
   whose bytes are not on disk yet;
3. it gets its final ``mode`` (fchmod: the umask plays no part), unless
   the caller passes None and sets it itself;
4. it is renamed over the target, replacing an older file atomically;
5. the target's directory is fsynced, so the rename itself survives a
   crash (``sync_dir``).

A reader sees the old file or the new one, never a mix.  If anything fails
before the rename (or the ``with`` body raises, or is cancelled), the
temporary file is removed and the target is left as it was; the error
propagates.  After a crash between steps 1 and 4 a temporary file may be
left behind: callers that write into a shared temporary directory clean
it (``Store.clean_tmp``).  So that a cleaner can tell such a leftover from
a file being written, whatever pid namespace or machine the writer is in,
the writer holds an exclusive flock on the temporary file from its making
until it is renamed away or removed (``locked_mkstemp``): a cleaner removes
only a file whose lock it can take.

``durable=False`` skips the fsyncs (steps 2 and 5) for files that are only
a cache and are checked when read, so a torn one is rebuilt, not trusted.
Blocking; not thread-safe per ``Staged``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from providers.durable import sync_directory as sync_directory  # callers import it here
from providers.locked_temps import locked_mkstemp


@dataclass
class Staged:
    """A temporary file being written: ``file`` open for writing at ``path``."""

    path: Path
    file: BinaryIO
    mode: int | None
    durable: bool = True
    committed: bool = False
    _synced: bool = False

    def sync(self) -> None:
        """Flush and (if durable) fsync the bytes written so far: step 2, done early.

        For a caller that writes in a worker thread and commits from another
        one: the blocking part happens in the thread.
        """
        self.file.flush()
        if self.durable:
            os.fsync(self.file.fileno())
        self._synced = True

    def commit(self, target: Path, *, sync_dir: bool = True) -> None:
        """Put the file at ``target``: steps 2 to 5; once only.

        ``sync_dir=False`` leaves the directory unsynced, for a caller that
        commits several files into one directory and syncs it with the last.
        """
        if self.committed:
            raise RuntimeError(f"{self.path} is committed already")
        if not self._synced:
            self.sync()
        if self.mode is not None:
            os.fchmod(self.file.fileno(), self.mode)
        # Renamed before it is closed: closing drops the flock that keeps a
        # cleaner of the temporary directory from removing it (``locked_mkstemp``).
        self.file.flush()  # all written: the name must not come before the bytes
        os.rename(self.path, target)
        self.committed = True
        self.file.close()
        if sync_dir and self.durable:
            sync_directory(target.parent)


@contextlib.contextmanager
def staged_file(
    directory: Path, *, mode: int | None, prefix: str = ".staged.", durable: bool = True
) -> Iterator[Staged]:
    """A new temporary file in ``directory``, removed on exit unless committed.

    ``directory`` must be on the filesystem of the target ``commit`` is
    given.  ``mode`` None: the file keeps 0600 unless the caller changes it.
    """
    fd, path = locked_mkstemp(directory, prefix)
    staged = Staged(path, os.fdopen(fd, "wb"), mode, durable)
    try:
        yield staged
    finally:
        if not staged.committed:
            # Removed while its lock is held (see ``locked_mkstemp``), then closed.
            # Closing flushes what is buffered, which fails as the write did (a full
            # disk): the file goes all the same, and the error that ended the block stays.
            with contextlib.suppress(FileNotFoundError):
                staged.path.unlink()
            with contextlib.suppress(OSError):
                staged.file.close()


def write_atomic(
    target: Path,
    data: bytes,
    *,
    mode: int,
    temp_dir: Path | None = None,
    prefix: str = ".staged.",
    durable: bool = True,
) -> None:
    """Write ``data`` to ``target`` atomically (the module's steps 1 to 5).

    The temporary file goes in ``temp_dir`` (default: ``target``'s directory).
    """
    with staged_file(
        target.parent if temp_dir is None else temp_dir,
        mode=mode,
        prefix=prefix,
        durable=durable,
    ) as staged:
        staged.file.write(data)
        staged.commit(target)


def publish(path: Path, target: Path, *, sync_dir: bool = True) -> None:
    """Rename the finished file ``path`` over ``target``, after fsyncing its bytes.

    For a file written by code that only knows a path (a decompressor, a
    library): steps 2, 4 and 5; its mode stays as it was made.  ``path``
    must be on ``target``'s filesystem.  On failure ``path`` stays where it
    is, for its caller to remove.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(path, target)
    if sync_dir:
        sync_directory(target.parent)
