"""The kernel's read-ahead on a mount, raised as the mount answers the kernel's INIT.

A new FUSE mount starts with an empty page cache, so a container's first
run sends a read for every window of a library or program it touches;
each read is a round trip to the mount process.  The kernel reads ahead
at most the mount's ``read_ahead_kb`` (its backing device's, in
``/sys/class/bdi/MAJOR:MINOR``), 128 KiB by default; a larger window
makes fewer, larger reads of the same files (python3's start on the
Debian bench image: about 100 reads of at most 128 KiB, about 50 with
512 KiB), and the mount process serves a larger read of a local layer
in one system call.  1 MiB was tried too: it read a third more bytes
than the start needed, and gained nothing.

When: the kernel reads ahead at most the smaller of the device's
read-ahead when it reads the answer to its INIT request and the
``max_readahead`` of that answer, and it offers the device's value in the
request (128 KiB then), which libfuse answers with as it is.  With the
pyfuse3 that ``scripts/setup`` builds (patch 0004,
``Operations.max_readahead``), ``after_init`` answers with the larger
window and raises the device's from ``Operations.init``, which pyfuse3
calls before the answer goes out: the mount reads ahead the larger
window from its first request on.  A stock pyfuse3 answers with the
offer, which cuts back a value written before the answer; there the
device's value is raised through a callback trio runs at its next turn,
after the answer, so the first request or two may still see 128 KiB.

Best effort: writing ``read_ahead_kb`` needs root in the initial user
namespace; anywhere else the mount works as before, with the kernel's
default window, and says so at debug level.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

log = logging.getLogger(__name__)

READ_AHEAD_KIB = 512
SYSFS_BDI = Path("/sys/class/bdi")
MOUNTINFO = Path("/proc/self/mountinfo")
# What patch 0004 of pyfuse3 reads on the operations object when it answers INIT.
MAX_READAHEAD = "max_readahead"


def _unescape(field: str) -> str:
    r"""A mountinfo path field as the path it is (``\040`` and the like are octal escapes)."""
    if "\\" not in field:
        return field
    out, at = [], 0
    while at < len(field):
        if field[at] == "\\" and field[at + 1 : at + 4].isdigit():
            out.append(chr(int(field[at + 1 : at + 4], 8)))
            at += 4
        else:
            out.append(field[at])
            at += 1
    return "".join(out)


def fuse_device(mountinfo: str, mountpoint: str) -> str | None:
    """``MAJOR:MINOR`` of the FUSE mount on ``mountpoint`` in ``mountinfo``; None if none.

    The last one listed wins: a mount over an earlier one at the same path
    hides it, and is listed after it.
    """
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-")
        except ValueError:
            continue
        if len(fields) <= separator + 1 or len(fields) < 5:
            continue
        fstype = fields[separator + 1]
        if (fstype == "fuse" or fstype.startswith("fuse.")) and _unescape(fields[4]) == mountpoint:
            found = fields[2]
    return found


def raise_read_ahead(
    mountpoint: str,
    kib: int = READ_AHEAD_KIB,
    *,
    mountinfo: Path | None = None,
    bdi: Path | None = None,
) -> bool:
    """Raise the read-ahead of the FUSE mount on ``mountpoint`` to ``kib``; whether it was.

    ``mountinfo`` and ``bdi``: the mount table and sysfs' devices, by
    default ``MOUNTINFO`` and ``SYSFS_BDI``.  Never lowers the window,
    never raises: a failure is logged at debug level and the mount keeps
    the kernel's window.
    """
    mountinfo = MOUNTINFO if mountinfo is None else mountinfo
    bdi = SYSFS_BDI if bdi is None else bdi
    try:
        device = fuse_device(mountinfo.read_text(), mountpoint)
        if device is None:
            log.debug("read-ahead left as it is: no FUSE mount on %s in %s", mountpoint, mountinfo)
            return False
        knob = bdi / device / "read_ahead_kb"
        if int(knob.read_text()) >= kib:
            return False
        knob.write_text(f"{kib}\n")
        return True
    except Exception as error:  # a window, not the mount: run in trio's loop, it must not raise
        log.debug("read-ahead of %s left as it is: %s", mountpoint, error)
        return False


def after_init(
    ops: pyfuse3.Operations, mountpoint: Path, kib: int = READ_AHEAD_KIB, *, answered: bool
) -> Callable[[], None]:
    """Make ``ops`` raise the mount's read-ahead to ``kib`` as it answers INIT.

    Wraps what ``ops.init`` was (pyfuse3's does nothing) and returns the
    wrapper, set on ``ops`` too.  ``answered``: whether pyfuse3 answers
    INIT with ``ops.max_readahead`` (patch 0004; ``lazyfs.fs.caps``
    knows); see the module docstring for what changes with it.
    ``mountpoint`` is made absolute here, as the mount table names it:
    before the mount, since looking at it after would ask the mount
    process itself.
    """
    where = os.path.realpath(mountpoint)
    before = ops.init
    if answered:
        setattr(ops, MAX_READAHEAD, kib * 1024)  # read by pyfuse3 as it answers INIT

    def init() -> None:
        before()
        if answered:
            raise_read_ahead(where, kib)
        else:
            # Not now: the kernel would cut it back to its offer as it reads the answer.
            trio.lowlevel.current_trio_token().run_sync_soon(raise_read_ahead, where, kib)

    ops.init = init  # type: ignore[method-assign]
    return init
