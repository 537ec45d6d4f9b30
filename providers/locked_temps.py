"""Temporary files and directories a cleaner in any pid namespace can tell from leftovers.

A store's ``tmp/`` holds what writers make before they rename it into
place; what a writer killed leaves there is removed later by a cleaner
(``lazyfs.store.temps.clean_tmp``). Which entries are leftovers is told by
flock, not by the pid in a name: a store may be shared by processes in
different pid namespaces or machines, to whom one pid is different
processes. A writer holds an exclusive flock on its entry (``locked_mkstemp``
for a file, ``locked_scratch`` for a directory) from its making until it is
renamed away or removed; the kernel drops it when the writer dies. Such
entries are named ``<pid>.flock.<random>`` (``temp_prefix``; the pid only
for people).

Imports: the standard library, ``providers.fslock`` and ``providers.fstree``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from providers.fslock import same_file
from providers.fstree import remove_tree

# The mark, after the pid, in the name of an entry of the store's tmp/ whose
# writer holds its flock (``lazyfs.store.temps.clean_tmp``).
LOCKED = "flock"


def temp_prefix() -> str:
    """The start of the name of a temporary file or directory made in the store's ``tmp/``."""
    return f"{os.getpid()}.{LOCKED}."


def locked_mkstemp(directory: Path, prefix: str) -> tuple[int, Path]:
    """``tempfile.mkstemp`` in ``directory``, its descriptor holding an exclusive flock.

    The lock says "being written" to a cleaner of ``directory`` in any pid
    namespace, or on any machine flock reaches (``lazyfs.store.temps``);
    the kernel drops it with the descriptor, so a writer that dies leaves
    a file any cleaner can take.  Keep the descriptor open until the file
    is renamed away or removed.  Between making the file and locking it a
    cleaner may take it: then the name no longer leads to our file, and
    we make another.
    """
    while True:
        fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
        try:
            # Blocking: a cleaner holds it only while it removes the file.
            fcntl.flock(fd, fcntl.LOCK_EX)
            if same_file(fd, name):
                return fd, Path(name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def locked_scratch(directory: Path) -> Iterator[Path]:
    """A new private directory in ``directory`` (a store's ``tmp/``), removed on exit.

    Locked for a cleaner as ``locked_mkstemp`` locks a file: a
    flock on a read-only descriptor of the directory, held until it is
    removed.  Move what is made in it out before the end of the block.
    """
    while True:
        path = Path(tempfile.mkdtemp(dir=directory, prefix=temp_prefix()))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # a cleaner took it before we opened it: make another
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # a cleaner took it before we locked it: make another
    try:
        yield path
    finally:
        try:
            # The layer may be deeper than shutil.rmtree can recurse.
            with contextlib.suppress(OSError):
                remove_tree(path)
        finally:
            os.close(fd)
