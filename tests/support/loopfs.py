"""A small ext4 filesystem on a loop device, for tests that need a disk to fill.

``loop_filesystem`` makes a sparse image file, attaches it with
``losetup``, formats it ``mkfs.ext4 -m 0`` (no blocks reserved for root, so
``df`` free is what a test can fill) and mounts it; on the way out, also
when the test failed, it unmounts everything under it, unmounts it and
detaches the device.  Needs root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mounts import unmount_all_under


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: losetup, mkfs.ext4 and mount")


@contextlib.contextmanager
def loop_filesystem(where: Path, size_mib: int, features: str = "") -> Iterator[Path]:
    """An empty ext4 of ``size_mib`` MiB mounted at ``where/mnt``, for the block;
    ``features``, if given, passed to ``mkfs.ext4 -O`` (``^filetype``: no d_type)."""
    need_root()
    image = where / "disk.img"
    mountpoint = where / "mnt"
    mountpoint.mkdir(parents=True)
    with image.open("wb") as disk:
        disk.truncate(size_mib << 20)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        options = ["-O", features] if features else []
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", *options, device], check=True)
        subprocess.run(["mount", device, str(mountpoint)], check=True)
        try:
            yield mountpoint
        finally:
            # What a failed test left mounted on it (overlay, FUSE), deepest first, then it.
            unmount_all_under(mountpoint)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
        image.unlink()
