"""On a full disk, the commands that free space still run.

A work dir on a small ext4 (``tests.support.loopfs``) filled to its last
byte, as a container writing without bound leaves it: ``destroy``,
``recover`` and image removal must still work, or nothing lazyfs offers
can give the space back. Once space is free, the next provision works.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs
from tests.support.loopfs import loop_filesystem

pytestmark = pytest.mark.integration


@pytest.fixture
def lazyfs(tmp_path: Path, image_dir: Path) -> Iterator[Lazyfs]:
    with loop_filesystem(tmp_path / "disk", 48) as disk:
        on_disk = Lazyfs(disk / "work", image_dir)
        try:
            yield on_disk
        finally:
            on_disk("recover", check=False)


def fill(directory: Path) -> None:
    """Write into ``directory`` until its filesystem has not a byte left."""
    for size in (1 << 20, 4096, 1):
        n = 0
        while True:
            try:
                (directory / f"fill-{size}-{n}").write_bytes(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
            n += 1
    assert os.statvfs(directory).f_bavail == 0


def test_a_container_that_filled_the_disk_can_be_destroyed(lazyfs: Lazyfs) -> None:
    lazyfs("provision", "keep", "busybox", "--backend", "copy")
    made = lazyfs("provision", "c1", "busybox", "--backend", "overlay", "--writable")
    fill(Path(json.loads(made.stdout)["rootfs"]))
    assert lazyfs("destroy", "c1").stdout == ""
    # The space is back: provisions work again, and recover keeps what it is told to.
    lazyfs("provision", "c2", "busybox", "--backend", "overlay")
    report = json.loads(lazyfs("recover", "--keep", "keep").stdout)
    assert report["kept"] == ["keep"] and report["destroyed"] == ["c2"]


def test_recover_destroys_on_a_full_disk(lazyfs: Lazyfs) -> None:
    made = lazyfs("provision", "c1", "busybox", "--backend", "copy")
    fill(Path(json.loads(made.stdout)["rootfs"]))
    report = json.loads(lazyfs("recover").stdout)
    assert report["destroyed"] == ["c1"] and report["failed"] == {}


def test_an_image_can_be_removed_from_a_full_disk_by_the_first_gc(lazyfs: Lazyfs) -> None:
    lazyfs("pull", "busybox")  # a store no GC pass has run in yet
    beside = lazyfs.work_dir.parent / "other"
    beside.mkdir()
    fill(beside)
    removed = lazyfs("images", "rm", "busybox")
    assert removed.stderr == ""
    assert os.statvfs(beside).f_bavail > 0
    assert json.loads(lazyfs("images", "--json").stdout) == []


def test_a_store_made_before_gc_had_its_dir_still_opens_on_a_full_disk(lazyfs: Lazyfs) -> None:
    made = lazyfs("provision", "c1", "busybox", "--backend", "overlay", "--writable")
    (lazyfs.work_dir / "store" / "docker" / "gc").rmdir()  # as an earlier lazyfs left it
    fill(Path(json.loads(made.stdout)["rootfs"]))
    assert lazyfs("destroy", "c1").stdout == ""
