"""A writable fuse rootfs whose upper cannot hold whiteouts is refused at start.

A CI container whose ``/`` is overlayfs puts the work dir, and so a writable
fuse rootfs's upper, on overlayfs, which refuses a 0/0 character device (a
whiteout) in its own upper.  Every delete or rename of an image file in
such a rootfs would fail with EIO inside the container; instead ``provision``,
``mount`` and ``run`` refuse in one line before anything is provisioned, and
leave nothing behind: no container, no mount, no mount process.  A read-only
fuse rootfs needs no whiteouts and still starts there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mounts import mount, mounts_under, unmount, unmount_all_under
from providers.mountinfo import real_path
from tests.support.lazy_machine import mount_processes_under
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration

REFUSED = "a writable fuse rootfs needs an upper directory that can hold whiteouts"


@pytest.fixture
def on_overlay(tmp_path: Path, image_dir: Path) -> Iterator[Lazyfs]:
    """``Lazyfs`` with its work dir inside an overlayfs mounted for the test."""
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    merged = tmp_path / "merged"
    options = (
        f"lowerdir={tmp_path / 'lower'},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}"
    )
    mount("overlay", merged, "overlay", 0, options)
    try:
        on_it = Lazyfs(merged / "w", image_dir)
        try:
            yield on_it
        finally:
            on_it("recover", check=False)
            # What a failing test left mounted inside goes before the overlay itself.
            for point in mounts_under(merged):
                if point != real_path(merged):
                    unmount(point)
    finally:
        unmount_all_under(merged)


def nothing_left(lazyfs: Lazyfs) -> None:
    """No container, no mount and no mount process under the overlay."""
    merged = lazyfs.work_dir.parent
    containers = lazyfs.work_dir / "provisioner" / "containers"
    assert not containers.exists() or list(containers.iterdir()) == []
    mounts = lazyfs.work_dir / "mounts"
    assert not mounts.exists() or list(mounts.iterdir()) == []
    assert mounts_under(merged) == [real_path(merged)]
    assert mount_processes_under(merged) == []


def refused(result_line: str) -> None:
    assert REFUSED in result_line, result_line
    assert "on overlay cannot" in result_line, result_line


def test_a_writable_fuse_provision_on_overlayfs_is_refused(on_overlay: Lazyfs) -> None:
    result = on_overlay(
        "provision", "c1", "busybox", "--backend", "fuse", "--writable", check=False
    )
    refused(one_line_error(result))
    nothing_left(on_overlay)


def test_a_writable_mount_on_overlayfs_is_refused(on_overlay: Lazyfs, tmp_path: Path) -> None:
    point = on_overlay.work_dir.parent / "mnt"
    point.mkdir()
    result = on_overlay("mount", "busybox", str(point), "--writable", check=False)
    refused(one_line_error(result))
    assert list(point.iterdir()) == []
    nothing_left(on_overlay)


def test_run_on_the_fuse_backend_on_overlayfs_is_refused(on_overlay: Lazyfs) -> None:
    result = on_overlay("run", "--backend", "fuse", "busybox", "--", "rm", "/bin/cat", check=False)
    refused(one_line_error(result))
    assert result.stdout == ""
    nothing_left(on_overlay)


def test_a_read_only_fuse_rootfs_on_overlayfs_still_starts(on_overlay: Lazyfs) -> None:
    made = json.loads(on_overlay("provision", "c1", "busybox", "--backend", "fuse").stdout)
    assert (Path(made["rootfs"]) / "bin/busybox").is_file()
    on_overlay("destroy", "c1")
    nothing_left(on_overlay)
