"""The read-ahead of a FUSE mount of local layers: 1 MiB, not the kernel's 128 KiB.

The kernel reads ahead 128 KiB at a time on a FUSE mount: the program a
container starts (python3 is 6 MB), its libraries and modules then cost about
a hundred read requests, each a round trip through the mount process's
Python. With 1 MiB, FUSE's largest request, about thirty. Layers still in a
registry keep the default: their bytes are fetched as the kernel asks.

Set by the mount process itself once it serves (``lazyfs.fs.mount_main``):
the kernel takes the mount's read-ahead from its first exchange with the
mount process (the smaller of the two), so it is raised after that, on the
mount's device (``/sys/class/bdi/MAJOR:MINOR``), in a thread that asks the
mount's attributes first: the answer comes once that exchange is over. Not
by the caller before it returns: the container's runtime starts meanwhile,
and its first reads come some milliseconds later. Only root may; elsewhere
reads keep the default, which changes their speed only.

Imports: the standard library only.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

READ_AHEAD_KIB = 1024


def raise_read_ahead(mountpoint: Path, kib: int = READ_AHEAD_KIB) -> None:
    """Let the kernel read ``kib`` ahead in the files of the FUSE mount at ``mountpoint``."""
    with contextlib.suppress(OSError):
        # Answered by the mount process once it serves, so its first exchange is over.
        device = os.stat(mountpoint).st_dev
        knob = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
        with open(knob, "w") as setting:
            setting.write(f"{kib}\n")
