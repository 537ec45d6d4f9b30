"""Failures that printed a traceback, or two lines, now print one.

An image, or a mount point, named with bytes that are not UTF-8 (the JSON
records and the Image message hold UTF-8 text only); a user whose process
limit leaves no thread to start; a copy provision on a full disk, where the
build and the record written beside it both fail for the same reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mounts import mounts_under, unmount_all_under
from tests.support.lazyfs_cli import Lazyfs, one_line_error
from tests.support.nobody import as_nobody, nobodys_dir
from tests.support.small_disks import small_disk

pytestmark = pytest.mark.integration


def fs(path: Path) -> str:
    """``path`` as argv carries it to lazyfs: bytes that are not UTF-8 as surrogate escapes."""
    return os.fsdecode(os.fsencode(path))


@pytest.mark.parametrize(
    "command",
    [["run", "IMAGE", "--", "true"], ["pull", "IMAGE"], ["provision", "c1", "IMAGE"]],
)
@pytest.mark.parametrize("prefix", ["docker-archive:", "oci:", "", "appc:"])
def test_an_image_not_in_utf8_is_one_line(
    lazyfs: Lazyfs, tmp_path: Path, command: list[str], prefix: str
) -> None:
    named = prefix + (fs(tmp_path) + "/bb" if prefix.startswith(("docker-", "oci")) else "bb")
    image = named + os.fsdecode(b"\xff") + ".tar"
    argv = [image if word == "IMAGE" else word for word in command]
    line = one_line_error(lazyfs(*argv, check=False))
    shown = named + "\\xff.tar"
    assert (
        line == f"lazyfs: image '{shown}': not UTF-8 (lazyfs takes image names and paths in UTF-8)"
    )
    assert not (lazyfs.work_dir / "provisioner" / "containers" / "c1").exists()


def test_a_mount_point_not_in_utf8_is_one_line_and_a_link_to_one_works(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/mp\xff"))
    odd.mkdir()
    line = one_line_error(lazyfs("mount", "busybox", str(odd), check=False))
    assert (
        line == f"lazyfs: mount point {tmp_path}/mp\\xff is not UTF-8: lazyfs mounts at UTF-8 paths"
    )
    assert mounts_under(tmp_path) == []
    line = one_line_error(lazyfs("umount", str(odd), check=False))
    assert line == f"lazyfs: no lazyfs mount at {tmp_path}/mp\\xff (with this --work_dir)"
    # Named through a link that is not UTF-8, a UTF-8 mount point is used as ever.
    (tmp_path / "mp").mkdir()
    link = Path(os.fsdecode(os.fsencode(tmp_path) + b"/ln\xfe"))
    link.symlink_to(tmp_path / "mp")
    try:
        lazyfs("mount", "busybox", str(link))
        assert (tmp_path / "mp" / "bin" / "busybox").exists()
        assert lazyfs("umount", str(link)).stderr == ""
        assert mounts_under(tmp_path) == []
    finally:
        unmount_all_under(tmp_path)


@pytest.fixture
def nobodys(image_dir: Path) -> Iterator[Path]:
    with nobodys_dir(image_dir, "lazyfs-nproc-") as base:
        yield base


def test_no_thread_to_start_is_one_line(nobodys: Path) -> None:
    assert shutil.which("prlimit"), "prlimit (util-linux) is needed"
    # One process for the user: lazyfs itself, so its first thread is refused.
    line = one_line_error(as_nobody(nobodys, "pull", "busybox", nproc=1))
    assert line == "lazyfs: cannot start a thread (a process limit: ulimit -u?)"
    # Without the limit the same command works: the line was the limit's.
    done = as_nobody(nobodys, "pull", "busybox")
    assert done.returncode == 0, done.stderr


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs; unmounted afterwards, also when the test failed."""
    with small_disk(tmp_path / "disk", "8m", inodes=None) as where:
        yield where


def test_a_full_disk_is_said_once(disk: Path, image_dir: Path) -> None:
    lazyfs = Lazyfs(disk / "work", image_dir)
    lazyfs("pull", "busybox")
    # Room for the container's directory and little else: its info.json, written beside
    # the build, fails as the copy of the layers does.
    stat = os.statvfs(disk)
    (disk / "fill").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 4096))
    argv = ["provision", "c1", "busybox", "--backend", "copy"]
    debug = lazyfs("--debug", *argv, check=False)
    assert debug.returncode == 1
    # Both failed (the second is still told, where one asks for everything)...
    assert "lazyfs: DEBUG: provision: also failed beside the build:" in debug.stderr
    # ...and by default only the first is.
    line = one_line_error(lazyfs(*argv, check=False))
    assert line.endswith("No space left on device"), line
    assert not (disk / "work" / "provisioner" / "containers" / "c1").exists()
