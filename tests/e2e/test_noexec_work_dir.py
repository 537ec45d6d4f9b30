"""A work dir on a noexec filesystem: copy is refused there, and not chosen by default.

A copied rootfs on a filesystem mounted ``noexec`` provisions fine and then
runs nothing (runc: "permission denied"). So ``--backend copy`` is refused
in one line naming the directory, and the default, where overlay cannot run,
is fuse rather than copy. Overlay is fine there: its mount carries no noexec.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mounts import mounts_under
from backends.names import default_backend_name
from tests.support.lazyfs_cli import Lazyfs, one_line_error
from tests.support.loopfs import loop_filesystem
from tests.support.small_disks import small_disk

pytestmark = pytest.mark.integration


def noexec(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,noexec", where], check=True)
    assert os.statvfs(where).f_flag & os.ST_NOEXEC


@pytest.fixture
def lazyfs(tmp_path: Path, image_dir: Path) -> Iterator[Lazyfs]:
    """A work dir on a noexec tmpfs; unmounted afterwards, also when the test failed."""
    with small_disk(tmp_path / "disk", "64m", inodes=None) as disk:
        noexec(disk)
        on_disk = Lazyfs(disk / "work", image_dir)
        try:
            yield on_disk
        finally:
            on_disk("recover", check=False)
            assert mounts_under(on_disk.work_dir) == []


def test_copy_is_refused_in_one_line(lazyfs: Lazyfs) -> None:
    line = one_line_error(lazyfs("provision", "c1", "busybox", "--backend", "copy", check=False))
    prefix = "lazyfs: the copy backend cannot make a runnable rootfs from "
    suffix = ": its filesystem is mounted noexec: use --backend overlay or fuse"
    assert line.startswith(prefix) and line.endswith(suffix), line
    named = Path(line.removeprefix(prefix).removesuffix(suffix))
    assert named.is_relative_to(lazyfs.work_dir)
    assert list((lazyfs.work_dir / "provisioner" / "containers").iterdir()) == []


def test_overlay_is_the_default_there_and_runs(lazyfs: Lazyfs) -> None:
    made = json.loads(lazyfs("provision", "c1", "busybox").stdout)
    assert made["backend"] == "overlay"
    assert not os.statvfs(made["rootfs"]).f_flag & os.ST_NOEXEC
    lazyfs("destroy", "c1")


def test_where_overlay_cannot_run_the_default_is_fuse_not_copy(tmp_path: Path) -> None:
    # An ext4 without d_type, where overlay is not usable (test_overlay_file_types).
    with loop_filesystem(tmp_path / "disk", 32, features="^filetype") as disk:
        exec_tmp, noexec_tmp = disk / "exec", disk / "noexec"
        exec_tmp.mkdir()
        assert default_backend_name(exec_tmp) == "copy"
        noexec(disk)
        noexec_tmp.mkdir()
        assert default_backend_name(noexec_tmp) == "fuse"
