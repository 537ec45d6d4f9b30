"""Directories the machine's other users cannot enter: the work dir, the stores and what is below.

An image's setuid-root file, or its world-writable device node, is harmless
inside its container and a local root exploit anywhere another user can reach
it: in an extracted layer, a copied rootfs, the upper of a writable one. So
lazyfs keeps every tree it makes closed, as container engines do: its roots
and the directories it makes in them are ``0700``, set with ``fchmod`` so the
umask (0, say, in a service manager) never opens them, and set again on each
start so a tree an older lazyfs made ``0755`` is closed too.

Nothing lazyfs runs needs another user to pass through: mount processes,
extractions and runtimes run as root, and a container sees its rootfs from
inside (after ``pivot_root``), never through these parents. A caller that
ever needs a path passed through asks for ``0o711``, never for a readable
parent of a rootfs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from providers.errors import UsageError

PRIVATE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def private_dir(path: Path, mode: int = PRIVATE, *, exist_ok: bool = True) -> Path:
    """Make ``path`` a directory of this user with exactly ``mode``; returns ``path``.

    Missing parents are made first, each with ``mode`` too: they hold
    nothing but what lazyfs puts there. A directory that exists already is
    kept (unless ``exist_ok`` is false: FileExistsError, as ``mkdir``) and
    gets ``mode`` if it had another. A new directory is never more open than
    ``mode`` at any moment. Idempotent; safe when processes race to make the
    same directory. A symlink at ``path`` is followed: the caller named it.

    Raises UsageError when ``path`` is not a directory, or is owned by
    another user, who could open it again at will.
    """
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    for parent in reversed(missing):
        _make(parent, mode, exist_ok=True)
    _make(path, mode, exist_ok=exist_ok)
    return path


def _make(path: Path, mode: int, *, exist_ok: bool) -> None:
    try:
        # 0700 at most until fchmod below: the umask can only take bits away.
        os.mkdir(path, PRIVATE)
    except FileExistsError:
        if not exist_ok:
            raise
    try:
        fd = os.open(path, _DIR_FLAGS)
    except NotADirectoryError:
        raise UsageError(f"{path} is not a directory") from None
    try:
        # One descriptor for the check and the change, so they see one directory.
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UsageError(
                f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}):"
                " its owner could open it to everyone; use a directory of your own"
            )
        if stat.S_IMODE(st.st_mode) != mode:
            try:
                os.fchmod(fd, mode)
            except OSError as error:  # its own names no file (a read-only filesystem)
                raise OSError(error.errno, error.strerror, str(path)) from None
    finally:
        os.close(fd)


def private_file(path: Path, mode: int = 0o600) -> BinaryIO:
    """Make the file ``path`` with ``mode`` (this user's alone by default), open for writing.

    For a file a path names before it is renamed into a private tree:
    ``open(path, "wb")`` makes it 0666 less the umask, all of 0666 under a
    umask of 0 (a service manager's, say); ``mode`` is only ever narrowed.
    FileExistsError when ``path`` exists: a file made earlier keeps its mode.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    return os.fdopen(fd, "wb")


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to the file ``path``, made or truncated, with exactly ``mode``.

    For the small records lazyfs keeps beside its trees (a pid, a sidecar):
    ``write_text`` would make them 0666 less the umask, and keep the mode of
    one an older lazyfs made. A symlink at ``path`` is not followed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as file:
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
        file.write(data)
