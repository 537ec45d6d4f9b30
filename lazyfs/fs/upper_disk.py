"""The upper directory on disk, worked on relative to directory descriptors.

``lazyfs.fs.upper`` never names a file of the upper directory by an
absolute path: it opens the directory that holds the name (``open_dir``,
from an fd of the upper's root) and calls the ``*at`` form of each syscall
on that fd and the bare name.  A path inside the mount may be as long as
the kernel lets a caller name it (PATH_MAX - 1 bytes, or deeper through a
working directory), and the upper's own place on the machine must not take
from that; overlayfs works on dentries and has no such limit either.

Syscalls without an ``*at`` form (the xattr calls, and renames through a
helper that wants a path) get ``proc_path``: ``/proc/self/fd/N/NAME``,
whose magic link jumps straight to the directory, so the path stays short
and the last component is still not followed.

The work directory's own helpers are here too: ``clear_work`` removes
what a mount that died left there, and ``STARTED`` (``is_started``,
``mark_started``) says whether the upper beside it was set up before,
and ``check_whiteouts`` refuses, at start, one whose filesystem cannot
hold a whiteout.

Everything here is a plain blocking syscall on metadata; nothing yields.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from providers.errors import BackendError

# Longest path one syscall takes, without its NUL.
PATH_MAX = 4095
DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# An xattr of ``work``: the upper beside it has been set up (its root's attributes
# are the view's), so an empty upper is loaded, not set up again, on a remount.
# On ``work``, not in it: a directory of temporaries only; trusted: as the upper's own.
STARTED = "trusted.lazyfs.upper"

# The names in ``work`` of entries made whole there before they are renamed into
# the upper (``lazyfs.fs.upper_copy.UpperCopy.place``).
PLACED = "new-"

# The name in ``work`` of the whiteout ``check_whiteouts`` makes and removes at start.
WHITEOUT_PROBE = "whiteout-probe"
# mknod's answers that say a filesystem keeps no whiteouts (overlayfs' own upper: EPERM).
_NO_WHITEOUTS = (errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.EACCES)

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def open_dir(root_fd: int, names: Sequence[bytes]) -> int:
    """A new O_PATH fd on the directory ``names`` (components) below ``root_fd``.

    One openat per PATH_MAX bytes of names, so any depth opens.  Raises
    OSError (ENOENT, ENOTDIR) when a component is missing or no directory.
    """
    fd = os.open(".", DIR_FLAGS, dir_fd=root_fd)
    try:
        for chunk in _chunks(names):
            inner = os.open(chunk, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _chunks(names: Sequence[bytes]) -> Iterator[bytes]:
    """``names`` joined with ``/`` into relative paths of at most PATH_MAX bytes each."""
    chunk: list[bytes] = []
    length = -1
    for name in names:
        if chunk and length + 1 + len(name) > PATH_MAX:
            yield b"/".join(chunk)
            chunk, length = [], -1
        chunk.append(name)
        length += 1 + len(name)
    if chunk:
        yield b"/".join(chunk)


@contextmanager
def opened_dir(root_fd: int, names: Sequence[bytes]) -> Iterator[int]:
    """``open_dir``, closed again on exit."""
    fd = open_dir(root_fd, names)
    try:
        yield fd
    finally:
        os.close(fd)


def proc_path(dir_fd: int, name: str) -> str:
    """A short path to ``name`` in directory ``dir_fd``, for syscalls without an ``*at`` form."""
    return f"/proc/self/fd/{dir_fd}/{name}"


def set_xattr_at(dir_fd: int, name: str, key: str | bytes, value: bytes) -> None:
    """Set xattr ``key`` of ``name`` in ``dir_fd`` itself (a symlink is not followed)."""
    os.setxattr(proc_path(dir_fd, name), key, value, follow_symlinks=False)


def remove_xattr_at(dir_fd: int, name: str, key: str | bytes) -> None:
    """Remove xattr ``key`` of ``name`` in ``dir_fd``; OSError(ENODATA) when it has none."""
    os.removexattr(proc_path(dir_fd, name), key, follow_symlinks=False)


def truncate_at(dir_fd: int, name: str, size: int) -> None:
    """Set the size of regular file ``name`` in ``dir_fd``."""
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def remove_dir_at(dir_fd: int, name: str) -> None:
    """Remove directory ``name`` in ``dir_fd`` and the whiteouts it holds (nothing else is left)."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        for hidden in os.listdir(fd):
            os.unlink(hidden, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def exchange_at(a_fd: int, a: str | bytes, b_fd: int, b: str | bytes) -> None:
    """renameat2(RENAME_EXCHANGE) of ``a`` in ``a_fd`` and ``b`` in ``b_fd``; raises OSError.

    ``AT_FDCWD`` for either fd takes its name as a path.
    """
    a_name, b_name = os.fsencode(a), os.fsencode(b)
    if _libc.renameat2(a_fd, a_name, b_fd, b_name, _RENAME_EXCHANGE) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), os.fsdecode(a), None, os.fsdecode(b))


def clear_work(work: Path) -> None:
    """Remove what a mount that died left in ``work``: copy-up temporaries, and
    entries made to be renamed in (``PLACED``), directories too: empty until then.

    Other directories stay: kernel overlayfs makes some, if one was mounted
    over this work, and needs nothing from them either.
    """
    for entry in os.scandir(work):
        if not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)
        elif entry.name.startswith(PLACED):
            os.rmdir(entry.path)


def is_started(work: Path) -> bool:
    """Whether the upper beside ``work`` was set up by a mount before (``STARTED``)."""
    try:
        os.getxattr(work, STARTED, follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    return True


def mark_started(work: Path) -> None:
    """Note ``STARTED`` on ``work``, where trusted xattrs can be set (as root; else it is not).

    Without it, only an upper left empty loses its root's changes on a remount.
    """
    try:
        os.setxattr(work, STARTED, b"y", follow_symlinks=False)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def check_whiteouts(upper: Path, work: Path) -> None:
    """Refuse a writable mount whose upper cannot hold whiteouts, before it starts.

    A deleted or renamed lower name is a whiteout, a 0/0 character device
    (``lazyfs.fs.upper``).  Where the filesystem refuses to make one (the
    upper of an overlayfs refuses it in its own upper: EPERM; some refuse
    device nodes at all), every such change inside the container would fail
    with EIO; better one line at start.  One is made in ``work``, on the
    upper's filesystem, and removed again.  Other errors (ENOSPC, EROFS) are
    no answer about whiteouts: the mount's own writes say them as they come.
    Raises BackendError.
    """
    probe = work / WHITEOUT_PROBE
    # One a start that was killed right here left (``clear_work`` would remove it later).
    with suppress(FileNotFoundError):
        os.unlink(probe)
    try:
        os.mknod(probe, stat.S_IFCHR, os.makedev(0, 0))
    except OSError as error:
        if error.errno not in _NO_WHITEOUTS:
            return
        from providers.mountinfo import filesystem_type  # for the refusal only

        raise BackendError(
            "a writable fuse rootfs needs an upper directory that can hold whiteouts"
            f" (0/0 character devices); {upper} on {filesystem_type(work)} cannot:"
            f" {error.strerror}"
        ) from None
    os.unlink(probe)
