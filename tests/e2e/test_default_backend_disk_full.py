"""A full work dir is said as such, not taken as overlayfs being unusable.

The default backend is chosen by a trial overlay mount in the store's tmp/
(``backends.overlay.overlay_usable``). On a work dir whose filesystem has
no room left, that trial fails for want of room, which says nothing of
overlayfs: provision must say the disk is full, naming the store, rather
than fall back to the copy backend (which needs more room, not less) and
fail later for the wrong reason. Once there is room, overlay is chosen.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mounts import mounts_under
from backends.overlay import overlay_usable
from tests.support.lazyfs_cli import Lazyfs, one_line_error
from tests.support.small_disks import small_disk

pytestmark = pytest.mark.integration


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs; unmounted afterwards, also when the test failed."""
    with small_disk(tmp_path / "disk", "16m", inodes=None) as where:
        yield where


def fill(directory: Path) -> list[Path]:
    """Write into ``directory`` until its filesystem takes no more; the files written."""
    written: list[Path] = []
    for size in (1 << 20, 4096, 1):
        while True:
            path = directory / f"fill-{size}-{len(written)}"
            try:
                path.write_bytes(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                path.unlink(missing_ok=True)
                break
            written.append(path)
    return written


def test_the_probe_says_the_store_is_full(disk: Path) -> None:
    tmp = disk / "tmp"
    tmp.mkdir()
    fill(disk)
    with pytest.raises(OSError) as raised:
        overlay_usable(tmp)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp)
    assert list(tmp.iterdir()) == []  # the trial went


def test_provision_on_a_full_work_dir_says_so_in_one_line(disk: Path, image_dir: Path) -> None:
    lazyfs = Lazyfs(disk / "work", image_dir)
    lazyfs("recover")  # the work dir and store are made, and the work dir named as a user
    filled = fill(disk)
    line = one_line_error(lazyfs("provision", "c1", "busybox", check=False))
    tmp = lazyfs.work_dir / "store" / "docker" / "tmp"
    no_room = "No space left on device while trying overlayfs for the default backend"
    assert line == f"lazyfs: {no_room}: {tmp}"
    assert list((lazyfs.work_dir / "provisioner" / "containers").iterdir()) == []
    # With room again, the same provision gets overlay, as the default where it works.
    for path in filled:
        path.unlink()
    made = json.loads(lazyfs("provision", "c1", "busybox").stdout)
    try:
        assert "/backends/overlay/" in made["rootfs"]
    finally:
        lazyfs("destroy", "c1")
    assert mounts_under(lazyfs.work_dir) == []
