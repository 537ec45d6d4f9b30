"""Small tmpfs disks a test mounts itself, to be made full or read-only.

``small_disk`` mounts one (by default 16 MiB, 64 inodes) and, whatever happens, unmounts
everything under it afterwards; ``no_room`` makes it full (its inodes
taken) or read-only while a block runs. Needs root.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backends.mounts import mounts_under, unmount_all_under


@contextmanager
def small_disk(where: Path, size: str = "16m", inodes: int | None = 64) -> Iterator[Path]:
    """A tmpfs of ``size`` (and ``inodes``, None: tmpfs' own count) at ``where``, made
    here; it and what a test left mounted in it unmounted afterwards, whatever happened."""
    where.mkdir()
    options = f"size={size},mode=0700" + ("" if inodes is None else f",nr_inodes={inodes}")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "lazyfs-test", where], check=True)
    try:
        yield where
    finally:
        unmount_all_under(where)
        assert mounts_under(where) == []


@contextmanager
def no_room(disk: Path, how: str) -> Iterator[int]:
    """``disk`` full (its inodes taken by files) or read-only while the block runs; the
    errno a write there fails with."""
    if how == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
        try:
            yield errno.EROFS
        finally:
            subprocess.run(["mount", "-o", "remount,rw", disk], check=True)
        return
    fillers = disk / "fillers"
    fillers.mkdir()
    made = 0
    try:
        while True:
            (fillers / str(made)).touch()
            made += 1
    except OSError as error:
        assert error.errno == errno.ENOSPC
    try:
        yield errno.ENOSPC
    finally:
        for n in range(made):
            (fillers / str(n)).unlink()
        fillers.rmdir()
