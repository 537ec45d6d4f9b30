"""A sparse file of an image counts its data, not its holes, in a `lazyfs mount`.

The image's one layer is made by GNU tar (``tar --sparse``) from the sparse
tree of ``tests.support.sparse`` plus a 1 GiB file of one small extent.
Mounted read-only, and writable before anything is copied up (and after a
chmod, a metadata-only copy that still reads the lower extents), each
sparse file's st_blocks is what the layer's sparse map holds (read here by
Python's tarfile, not by lazyfs) in 512-byte units, far below its size:
``du`` tells it from ``du --apparent-size``, and ``cp --sparse=auto`` and
``tar --sparse``, which look for holes only in a file that has fewer
blocks than its size, keep the holes.  An ordinary file still counts its
size.  The mount goes with ``lazyfs umount``, and with the ``lazyfs``
fixture on failure.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from lazyfs.fs.mount import is_mounted
from tests.support import sparse
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

GiB = sparse.GiB
BIG = sparse.BIG


@pytest.fixture
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image directory with sparse:latest, its one layer made by GNU tar (overrides e2e's)."""
    return sparse.image_dir(tmp_path_factory.mktemp("sparse-image"))


def mapped_blocks(image_dir: Path) -> dict[str, tuple[int, int]]:
    """Each sparse file of the image's layer: (size, its sparse map's bytes in 512-byte units)."""
    found = {}
    with tarfile.open(image_dir.parent / "layer.tar") as layer:
        for member in layer.getmembers():
            if member.issparse():
                # (offset, length) pairs; typeshed does not say so.
                pairs: list[tuple[int, int]] = getattr(member, "sparse", None) or []
                data = sum(length for _, length in pairs)
                found[member.name] = (member.size, (data + 511) // 512)
    return found


def du_bytes(path: Path, *apparent: str) -> int:
    out = subprocess.run(
        ["du", "-s", "--block-size=1", *apparent, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[0])


def assert_sparse_counts(root: Path, mapped: dict[str, tuple[int, int]], work: Path) -> None:
    assert set(sparse.FILES) | {BIG} <= set(mapped)
    for path, (size, blocks) in mapped.items():
        got = os.stat(root / path)
        assert (got.st_size, got.st_blocks) == (size, blocks), path
    assert mapped["var/lib/all-hole"][1] == 0
    assert mapped[BIG][1] * 512 <= 64 << 10  # far below its 1 GiB
    assert du_bytes(root / BIG, "--apparent-size") == GiB
    assert du_bytes(root / BIG) == mapped[BIG][1] * 512
    plain = os.stat(root / "etc/plain")
    assert plain.st_blocks == (plain.st_size + 511) // 512  # an ordinary file: its size
    # cp looks for holes only where st_blocks says there are some.
    copy = work / "copied"
    subprocess.run(["cp", "--sparse=auto", str(root / BIG), str(copy)], check=True)
    assert os.stat(copy).st_blocks * 512 <= 1 << 20
    copy.unlink()


@pytest.mark.parametrize("writable", [False, True], ids=["read-only", "writable"])
def test_sparse_files_report_their_data_as_blocks(
    lazyfs: Lazyfs, image_dir: Path, tmp_path: Path, writable: bool
) -> None:
    mapped = mapped_blocks(image_dir)
    point = tmp_path / "mnt"
    point.mkdir()
    try:
        lazyfs("mount", "sparse", str(point), *(["--writable"] if writable else []))
        assert_sparse_counts(point, mapped, tmp_path)
        if writable:
            # A metadata change copies no data: the file still reads the lower extents.
            os.chmod(point / BIG, 0o600)
            assert_sparse_counts(point, mapped, tmp_path)
        lazyfs("umount", str(point))
        assert not is_mounted(point)
    finally:
        if is_mounted(point):
            lazyfs("umount", str(point), check=False)
