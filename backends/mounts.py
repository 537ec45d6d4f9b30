"""mount(2) and umount2(2) through libc, and which mounts lie under a directory.

``is_mounted``, ``mount_points`` and ``mount_point_set`` (``providers.mountinfo``)
are here too, so backends ask one module about mounts.

``mounts_under`` and ``unmount_all_under`` read the mount table each time
they are asked, unless a ``MountLook`` is in force (``looking_through``):
then the table is read again only once the kernel says it changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import threading
from collections.abc import Collection, Iterator
from contextvars import ContextVar
from pathlib import Path

from providers.errors import BackendError
from providers.mountinfo import is_mounted, mount_point_set, mount_points, real_path

__all__ = [
    "NOT_ANSWERING",
    "MountLook",
    "bind_mount",
    "is_mounted",
    "looking_through",
    "mount",
    "mount_point_set",
    "mount_points",
    "mount_problem",
    "mounts_under",
    "unmount",
    "unmount_all_under",
]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
# How long a mount may take to answer statfs before it is taken for stopped or stuck.
ANSWER_DEADLINE = 5.0
NOT_ANSWERING = "is not answering (its process is stopped or stuck)"


def _load_libc() -> ctypes.CDLL:
    """The C library's mount and umount2.

    The running program's own symbols come first (libc is among them): no
    ``ldconfig -p`` subprocess, as ``ctypes.util.find_library`` runs. A
    program linked without them (static, say) gets libc by name.
    """
    own = ctypes.CDLL(None, use_errno=True)
    if hasattr(own, "mount") and hasattr(own, "umount2"):
        return own
    from ctypes.util import find_library

    return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)


_libc = _load_libc()
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def mount(source: str, target: Path, fstype: str | None, flags: int, data: str = "") -> None:
    result = _libc.mount(
        source.encode(),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if result != 0:
        err = ctypes.get_errno()
        raise BackendError(f"mount {source} on {target} failed: {os.strerror(err)}")


def bind_mount(source: Path, target: Path, *, readonly: bool) -> None:
    """Bind ``source`` on ``target``; read-only needs a second, remounting call."""
    mount(str(source), target, None, MS_BIND | MS_REC)
    try:
        # Private, so later mounts inside the rootfs do not leak back to the store.
        mount("none", target, None, MS_PRIVATE | MS_REC)
        if readonly:
            mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    except BackendError:
        unmount(target)
        raise


def unmount(target: Path) -> None:
    """Unmount ``target``; fine when nothing is mounted there. Detaches when busy."""
    path = os.fsencode(target)
    if _libc.umount2(path, 0) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):  # not a mount point, or gone
        return
    if err == errno.EPERM and not is_mounted(target):  # a user's answer for no mount point
        return
    if err == errno.EBUSY and _libc.umount2(path, MNT_DETACH) == 0:
        return
    raise BackendError(f"unmount {target} failed: {os.strerror(ctypes.get_errno() or err)}")


class MountLook:
    """The mount table, read again only once it has changed: for a pass over many trees.

    The kernel marks an open ``/proc/self/mountinfo`` (POLLPRI) when any
    mount or unmount changes this namespace's table, ours or anyone's,
    since it was last polled. ``points`` polls first and reads the table
    again if it was marked, so every answer is as current as a read made
    then, and a pass that changes nothing reads the table once. A mount
    made after the answer is no more seen than after a read: what deletes
    relies, as ever, on ``remove_tree`` refusing another filesystem.
    Thread-safe; a context manager that closes it.
    """

    def __init__(self) -> None:
        self._watched = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._watched, select.POLLPRI | select.POLLERR)
        self._points: list[Path] | None = None
        self._lock = threading.Lock()

    def points(self) -> list[Path]:
        """Every mount point of this namespace now (``mount_points``)."""
        with self._lock:
            # Polled before the read: a change meanwhile marks it again, for the next ask.
            changed = any(
                events & (select.POLLPRI | select.POLLERR) for _, events in self._poll.poll(0)
            )
            if changed or self._points is None:
                self._points = None  # a read that fails after the poll leaves none to trust
                self._points = mount_points()
            return self._points

    def close(self) -> None:
        os.close(self._watched)

    def __enter__(self) -> MountLook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_look: ContextVar[MountLook | None] = ContextVar("lazyfs_mount_look", default=None)


@contextlib.contextmanager
def looking_through(look: MountLook | None) -> Iterator[None]:
    """Within the block, in this context, ``mounts_under`` and ``unmount_all_under`` ask
    ``look`` rather than read the table each time; None: they read it."""
    token = _look.set(look)
    try:
        yield
    finally:
        _look.reset(token)


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root``, deepest first (the order to unmount)."""
    root = real_path(root)
    look = _look.get()
    points = mount_points() if look is None else look.points()
    found = {p for p in points if p == root or root in p.parents}
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(root: Path) -> None:
    """Unmount everything at or below ``root``; raises if something stays mounted."""
    found = mounts_under(root)
    if not found:
        return  # that look was the one asked: none needs making again
    for point in found:
        unmount(point)
    left = mounts_under(root)
    if left:
        raise BackendError(f"still mounted after unmount: {', '.join(map(str, left))}")


def mount_problem(target: Path, points: Collection[Path] | None = None) -> str | None:
    """Why ``target`` is not a working mount point (one short clause), or None.

    ``points``: the mount table as read once for many targets
    (``mount_point_set``); None, it is read now. What acts on the answer
    (mounting again over ``target``) asks with None: a snapshot may be older
    than a mount made or taken down since.

    A FUSE mount whose process died is still in the mount table; the kernel
    answers ENOTCONN for it, which is how it is told from a live one. Asked
    with statfs, which the kernel always sends to the FUSE process: a stat
    may be answered from attributes the kernel still caches for the root
    (for years, on a read-only lazyfs mount).

    A mount whose process is stopped or stuck answers never: it is asked in
    a thread, given up on after ``ANSWER_DEADLINE`` seconds and left to end
    with the process (the kernel lets a fatal signal end the wait).
    """
    if not is_mounted(target, points):
        return "is not mounted"
    answer: list[OSError | None] = []

    def ask() -> None:
        try:
            os.statvfs(target)
        except OSError as error:
            answer.append(error)
        else:
            answer.append(None)

    asking = threading.Thread(target=ask, name="lazyfs-statfs", daemon=True)
    asking.start()
    asking.join(ANSWER_DEADLINE)
    if not answer:
        return NOT_ANSWERING
    if answer[0] is not None:
        return f"is a dead mount ({answer[0].strerror})"
    return None
