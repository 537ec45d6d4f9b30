"""What a provision leaves on disk is there after a power cut right after it.

A work dir on an ext4 filesystem in a file (a loop device). Right after a
provision, the file holds what the filesystem has written back so far: a
copy of it is the disk a power cut would leave. Mounted (its journal
replayed), the container must be complete and its rootfs, or the layer its
overlay shares with every other container, whole: a tree lazyfs trusts is
never left with empty files.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def _mounted(image: Path, at: Path) -> Iterator[Path]:
    device = _run("losetup", "--find", "--show", str(image))
    try:
        at.mkdir(exist_ok=True)
        _run("mount", "-t", "ext4", device, str(at))
        try:
            yield at
        finally:
            _run("umount", str(at))
    finally:
        _run("losetup", "--detach", device)


@pytest.mark.parametrize("backend", ["copy", "overlay"])
def test_a_provision_is_on_disk_when_it_returns(image_dir: Path, backend: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="lazyfs-power-cut-"))
    try:
        disk = base / "disk.ext4"
        with open(disk, "wb") as file:
            file.truncate(256 << 20)
        _run("mkfs.ext4", "-q", "-F", str(disk))
        with ExitStack() as mounts:
            live = mounts.enter_context(_mounted(disk, base / "live"))
            lazyfs = Lazyfs(live / "work", image_dir)
            lazyfs("provision", "c1", "busybox", "--backend", backend)
            try:
                # The power goes now: the disk is what the filesystem wrote back so far.
                shutil.copyfile(disk, base / "after.ext4")
                # The tree lazyfs trusts: the copy, or the layer the overlay mounts shares.
                trusted = live / "work" / ("store" if backend == "overlay" else "provisioner")
                want = trusted.rglob("bin/busybox")
                sizes = {p.relative_to(live): p.stat().st_size for p in want if p.is_file()}
            finally:
                lazyfs("destroy", "c1")
        assert sizes and all(sizes.values())
        with _mounted(base / "after.ext4", base / "after") as after:
            for path, size in sizes.items():
                assert (after / path).is_file() and (after / path).stat().st_size == size, path
            containers = after / "work" / "provisioner" / "containers"
            assert (containers / "c1" / "info.json").is_file()
            assert not (containers / "c1" / "provisioning").exists()
    finally:
        shutil.rmtree(base)
