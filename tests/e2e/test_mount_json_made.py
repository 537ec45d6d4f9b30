"""`lazyfs mount IMAGE MOUNTPOINT --json` prints the mount made as the listing gives it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.fs.mount import is_mounted
from tests.support.lazyfs_cli import Lazyfs, mount_process_alive

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("writable", [False, True], ids=["ro", "rw"])
def test_mount_with_json_prints_one_object_as_the_listing_has_it(
    lazyfs: Lazyfs, tmp_path: Path, writable: bool
) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    words = ["busybox", str(point), "--json", *(["--writable"] if writable else [])]
    try:
        made = lazyfs("mount", *words)
        # One object and nothing else on stdout (a trailing newline aside).
        item = json.loads(made.stdout)
        listed = json.loads(lazyfs("mount", "--json").stdout)
        assert listed == [item]
        assert (item["mountpoint"], item["mode"], item["writable"], item["mount"]) == (
            str(point), "rw" if writable else "ro", writable, "alive",
        )  # fmt: skip
        assert item["image"] == "docker.io/library/busybox:latest"
        assert item["digest"].startswith("sha256:") and mount_process_alive(item["pid"])
    finally:
        if is_mounted(point):
            lazyfs("umount", str(point), check=False, timeout=60)
    assert not is_mounted(point)
