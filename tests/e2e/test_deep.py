"""Trees deeper than Python's recursion limit, from an image or made by a container."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backends.mounts import mounts_under
from backends.overlay import overlay_usable
from tests.support.lazyfs_cli import DEEP, Lazyfs

pytestmark = pytest.mark.integration


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def descend(rootfs: Path, depth: int, *, make: bool = False) -> int:
    """An fd on ``depth`` levels of ``d`` below ``rootfs``, made if asked (no path that long)."""
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            if make:
                os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


@pytest.mark.parametrize("backend", ["copy", "overlay", "fuse"])
def test_a_deep_image_provisions_and_is_destroyed(lazyfs: Lazyfs, backend: str) -> None:
    if backend == "overlay" and not overlay_usable(lazyfs.work_dir.parent):
        pytest.skip("needs overlayfs on the work dir's filesystem")
    out = json.loads(lazyfs("provision", "c1", "deep", "--backend", backend, "--writable").stdout)
    fd = descend(Path(out["rootfs"]), DEEP)
    try:
        with open("f", opener=lambda name, flags: os.open(name, flags, dir_fd=fd)) as f:
            assert f.read() == "bottom\n"
        os.mkdir("made", dir_fd=fd)  # overlay and fuse copy every parent up first
    finally:
        os.close(fd)
    lazyfs("destroy", "c1")
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []


def test_recover_removes_containers_that_made_deep_trees(lazyfs: Lazyfs) -> None:
    for cid, backend in (("c1", "copy"), ("c2", "fuse")):
        out = json.loads(
            lazyfs("provision", cid, "busybox", "--backend", backend, "--writable").stdout
        )
        os.close(descend(Path(out["rootfs"]) / "tmp", DEEP, make=True))
    report = json.loads(lazyfs("recover").stdout)
    assert report["destroyed"] == ["c1", "c2"]
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []


def test_a_container_on_fuse_nests_directories_and_run_cleans_up(lazyfs: Lazyfs) -> None:
    script = (
        "i=0; while [ $i -lt 1200 ]; do mkdir d && cd d || exit 9; i=$((i+1)); done; pwd | wc -c"
    )
    result = lazyfs("run", "--backend", "fuse", "busybox", "--", "sh", "-c", script, check=False)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == 1200 * 2 + 1  # "/d" 1200 times and a newline
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []
