"""`lazyfs mount` alone lists the mounts `lazyfs mount` made with this work dir, end to end."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazyfs.fs.mount import is_mounted
from lazyfs.provision.devmount import record_dir
from tests.support.lazyfs_cli import Lazyfs, mount_process_alive

pytestmark = pytest.mark.integration

HEADER = ["IMAGE", "MOUNTPOINT", "MODE", "STATE"]
BUSYBOX, ONE = "docker.io/library/busybox:latest", "docker.io/library/one:latest"


@pytest.fixture
def places(tmp_path: Path, lazyfs: Lazyfs) -> Iterator[list[Path]]:
    """Two empty mount points, whatever is mounted there (or recorded) taken down after."""
    points = [tmp_path / "ro", tmp_path / "rw"]
    for point in points:
        point.mkdir()
    yield points
    for point in points:
        if record_dir(lazyfs.work_dir, point).exists() or is_mounted(point):
            lazyfs("umount", str(point), check=False, timeout=60)


def listed(lazyfs: Lazyfs) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """The table's rows, split on runs of spaces, and the JSON list."""
    table = lazyfs("mount")
    rows = [line.split("  ") for line in table.stdout.splitlines()]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    return rows, json.loads(lazyfs("mount", "--json").stdout)


def test_nothing_mounted_lists_the_header_alone_and_creates_nothing(lazyfs: Lazyfs) -> None:
    table = lazyfs("mount", check=False)
    assert (table.returncode, table.stdout, table.stderr) == (0, "  ".join(HEADER) + "\n", "")
    as_json = lazyfs("mount", "--json", check=False)
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])
    assert not lazyfs.work_dir.exists()
    # Half a mount command line stays a usage error: it is no listing.
    for words in (["busybox"], ["--writable"]):
        assert lazyfs("mount", *words, check=False).returncode == 2


def test_two_mounts_are_listed_with_their_image_mount_point_and_mode(
    lazyfs: Lazyfs, places: list[Path]
) -> None:
    ro, rw = places
    lazyfs("mount", "busybox", str(ro))
    lazyfs("mount", "one", "--writable", str(rw))  # options between IMAGE and MOUNTPOINT too
    rows, items = listed(lazyfs)
    assert rows == [
        HEADER,
        [BUSYBOX, str(ro), "ro", "alive"],
        [ONE, str(rw), "rw", "alive"],
    ]
    assert [
        (item["image"], item["mountpoint"], item["mode"], item["writable"], item["mount"])
        for item in items
    ] == [
        (BUSYBOX, str(ro), "ro", False, "alive"),
        (ONE, str(rw), "rw", True, "alive"),
    ]
    assert all(
        item["digest"].startswith("sha256:") and mount_process_alive(item["pid"]) for item in items
    )
    lazyfs("umount", str(ro))
    rows, items = listed(lazyfs)
    assert rows == [HEADER, [ONE, str(rw), "rw", "alive"]]
    assert [item["mountpoint"] for item in items] == [str(rw)]


def test_a_mount_taken_away_behind_lazyfs_back_is_listed_as_gone(
    lazyfs: Lazyfs, places: list[Path]
) -> None:
    point = places[0]
    pid = json.loads(lazyfs("mount", "busybox", str(point)).stdout)["pid"]
    subprocess.run(["umount", "-l", str(point)], check=True)
    assert not is_mounted(point)
    rows, items = listed(lazyfs)
    assert rows == [HEADER, [BUSYBOX, str(point), "ro", "not mounted"]]
    assert [(item["mountpoint"], item["mount"]) for item in items] == [(str(point), "not mounted")]
    # Until `lazyfs umount` forgets it, with its process.
    lazyfs("umount", str(point), timeout=60)
    assert not mount_process_alive(pid)
    assert listed(lazyfs) == ([HEADER], [])
