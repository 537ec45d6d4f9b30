"""Taking a mount down: ``unmount`` and the steps ``lazyfs.fs.mount`` shares with it.

A mount process is told by its command line (``MOUNT_MODULE`` and its
mount point), since pids get reused; one that does not exit after the
unmount gets SIGTERM, then SIGKILL (a stopped one gets SIGTERM at once, and
SIGCONT).  A process whose command line is empty cannot be told: it is
waited for (and reaped, if it is our child) when it is exiting, and never
signalled.  Blocking.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lazyfs.fs.mount_peers import wait_ended
from providers.errors import BackendError
from providers.mountinfo import is_mounted, mount_points
from providers.private_dir import write_private

if TYPE_CHECKING:
    import ctypes

EXIT_TIMEOUT = 10.0
MOUNT_MODULE = "lazyfs.fs.mount_main"
_PF_KTHREAD = 0x00200000  # proc(5), /proc/PID/stat field 9
_MNT_DETACH = 0x2  # umount(2)
_UMOUNT_NOFOLLOW = 0x8


def note_pid(record: Path, mountpoint: Path, pid: int) -> None:
    """Write the mount process ``pid`` of ``mountpoint`` in ``record`` (``pid``), where
    unmount, destroy and a remount find it; unmount it when that fails (ENOSPC, Ctrl-C):
    unrecorded, it must not stay. The write's error is the one raised."""
    try:
        write_private(record / "pid", f"{pid}\n".encode())
    except BaseException:
        with contextlib.suppress(Exception):
            unmount(mountpoint, pid=pid)
        raise


def unmount(
    mountpoint: Path, *, pid: int | None, timeout: float = EXIT_TIMEOUT, named: bool = False
) -> None:
    """Unmount ``mountpoint`` and wait for its mount process ``pid`` to end.

    Fine when nothing is mounted there and when the process is gone.  A
    mount process that does not exit within ``timeout`` after the unmount
    gets SIGTERM, then SIGKILL (a stopped one SIGTERM at once); a process
    that cannot be told to be it is never signalled.  Raises BackendError if the mount stays.

    ``named``: ``mountpoint`` is as the mount table names it (a record's, its
    symlinks followed when it was mounted), so it is compared with the table
    as text and no path on the way to it is looked at but by the unmount
    itself.  Looking asks every mount on the way, and one whose process is
    stopped answers never: a caller that fears one takes the mount away first
    (``fusermount_unmount``, in a thread it can give up on), and this then
    only waits for the process.
    """

    def mounted() -> bool:
        return mountpoint in mount_points() if named else is_mounted(mountpoint)

    if not named or mounted():
        fusermount_unmount(mountpoint)
    seen = "other" if pid is None else _identify(pid, mountpoint.absolute())
    if pid is not None and seen == "exiting":
        wait_ended(pid, timeout)  # cannot be told whose: reaped if ours, never signalled
    if pid is not None and seen == "mount" and (_stopped(pid) or not wait_ended(pid, timeout)):
        # A stopped process ends on neither the unmount nor SIGTERM until it runs again:
        # not waited for, and continued after SIGTERM (as systemd stops a unit's), so it
        # exits as told, not killed a timeout later. Running, SIGCONT does nothing.
        signal_pid(pid, signal.SIGTERM)
        signal_pid(pid, signal.SIGCONT)
        if not wait_ended(pid, timeout):
            signal_pid(pid, signal.SIGKILL)
            wait_ended(pid, timeout)
    if mounted():
        raise BackendError(f"{mountpoint} is still mounted after unmount")


def fusermount_unmount(mountpoint: Path) -> None:
    """Take the FUSE mount at ``mountpoint`` away, as ``fusermount3 -u`` does; lazily
    (``-z``) only when it is busy. Fine when nothing is mounted there.

    Root unmounts with umount2(2) itself: libfuse mounted without fusermount3
    too, so a machine without it must not be left with mounts it cannot take
    down. Anyone else needs fusermount3. Raises BackendError, one line, when
    the mount stays or fusermount3 is missing.
    """
    if not is_mounted(mountpoint):
        return
    if os.geteuid() == 0:
        _umount2_unmount(mountpoint)
        return
    for args in (["-u"], ["-u", "-z"]):  # lazily only when busy
        try:
            done = subprocess.run(
                ["fusermount3", *args, str(mountpoint)],
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError:
            raise BackendError(
                f"cannot unmount {mountpoint}: fusermount3 is not installed "
                "(package fuse3; scripts/setup installs it)"
            ) from None
        if done.returncode == 0 or not is_mounted(mountpoint):
            return
    raise BackendError(f"fusermount3 -u {mountpoint} failed: {done.stderr.strip()}")


def _umount2_unmount(mountpoint: Path) -> None:
    """What ``fusermount3 -u`` and then ``-u -z`` do for root, by umount2(2).

    UMOUNT_NOFOLLOW: a symlink put in the mount's place is not followed to
    unmount whatever it names (``is_mounted`` does not follow it either).
    """
    path = os.fsencode(mountpoint)
    for flags in (_UMOUNT_NOFOLLOW, _UMOUNT_NOFOLLOW | _MNT_DETACH):  # lazily only when busy
        libc = _libc()
        if libc.umount2(path, flags) == 0:
            return
        number = _errno()
        if not is_mounted(mountpoint):  # went away meanwhile (EINVAL, ENOENT)
            return
        if number != errno.EBUSY:
            break
    raise BackendError(f"unmount {mountpoint} failed: {os.strerror(number)}")


@functools.cache
def _libc() -> ctypes.CDLL:
    # Not backends.mounts' copy: lazyfs.fs may not import backends (DESIGN.md, section 1).
    # ctypes loaded here, by an unmount, not by every command that imports this module.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
    return libc


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()


def _identify(pid: int, mountpoint: Path) -> Literal["mount", "exiting", "other"]:
    """What ``pid`` is now to the unmount of ``mountpoint`` (pids get reused).

    "mount": its command line says so.  "exiting": it has no command line
    because its memory is gone: a zombie, or a process on its way to one.
    The mount process gets there within a moment of the unmount (and an
    exec'd one is reaped only by waiting), but so might any other: it is
    waited for, not signalled.  "other": anything else, a kernel thread and
    a live process that emptied its command line (``PR_SET_MM``) included.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().split(b"\0")
        if args != [b""]:
            wanted = MOUNT_MODULE.encode() in args and os.fsencode(str(mountpoint)) in args
            return "mount" if wanted else "other"
        with open(f"/proc/{pid}/stat", "rb") as stat:
            flags = int(stat.read().rsplit(b")", 1)[1].split()[6])
        with open(f"/proc/{pid}/statm", "rb") as statm:
            pages = int(statm.read().split()[0])
    except (OSError, ValueError, IndexError):
        return "other"
    # A kernel thread has no memory of its own either, and never exits for us.
    return "exiting" if pages == 0 and not flags & _PF_KTHREAD else "other"


def _stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (SIGSTOP, or a tracer's stop): ``T``/``t`` in proc(5)'s stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


def signal_pid(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)
