"""A full or read-only disk: one line that says where, nothing half-written, reading still works."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: too small for busybox's 2 MiB layer."""
    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_a_blob_that_does_not_fit_names_itself_and_where(lazyfs: Lazyfs, small: Path) -> None:
    full = Lazyfs(small / "work", lazyfs.image_dir)
    line = one_line_error(full("pull", "busybox", check=False))
    store_tmp = small / "work" / "store" / "docker" / "tmp"
    assert line.startswith("lazyfs: No space left on device while storing blob sha256:")
    assert line.endswith(f": {store_tmp}")
    assert list(store_tmp.iterdir()) == []
    assert full("images").stdout.splitlines()[1:] == []


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs holding an empty work dir that is not 0700."""
    point = tmp_path / "ro"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    try:
        (point / "work").mkdir(mode=0o755)
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def test_a_read_only_work_dir_is_read_and_a_write_names_it(lazyfs: Lazyfs, read_only: Path) -> None:
    # Closing the work dir to 0700 cannot be done there: ps and images read it all the same.
    stuck = Lazyfs(read_only / "work", lazyfs.image_dir)
    assert stuck("ps").stdout.split()[0] == "ID"
    assert stuck("images").stdout.split()[0] == "REFERENCE"
    line = one_line_error(stuck("provision", "c1", "busybox", check=False))
    assert line == f"lazyfs: Read-only file system: {read_only / 'work' / 'store'}"
