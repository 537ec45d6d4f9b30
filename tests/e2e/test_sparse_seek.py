"""lseek(SEEK_DATA) and lseek(SEEK_HOLE) find a sparse file's holes in a `lazyfs mount`.

The image's one layer is made by GNU tar (``tar --sparse``) from the sparse
tree of ``tests.support.sparse`` plus a 1 GiB file of one small extent, as
in ``test_sparse_blocks``.  Mounted read-only and writable, on the path
with handles and on the no-open path (``LAZYFS_FUSE_NO_OPEN``), every
sparse file answers SEEK_DATA and SEEK_HOLE, at offsets in, before, after
and between its extents, as the layer's sparse map (read here by Python's
tarfile, not by lazyfs) says, and ENXIO at and past its end.  Without a
FUSE lseek handler the kernel answers as if the file were all data
(SEEK_DATA gives the offset back, SEEK_HOLE the size), which these checks
tell apart.  Writable, a write copies a file up, and its answers are then
those of a copy of the file made by GNU tar on the same filesystem with
the same write, through a handle opened before the write and a new one.
The mount goes with ``lazyfs umount``, and with the ``lazyfs`` fixture on
failure.
"""

from __future__ import annotations

import errno
import os
import tarfile
from pathlib import Path

import pytest

from lazyfs.fs.mount import is_mounted
from tests.support import sparse
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

GiB = sparse.GiB
MiB = 1 << 20
BIG = sparse.BIG
WRITTEN = "var/lib/all-hole"  # the file the writable mount writes to
WRITE_AT = MiB + 4096


@pytest.fixture
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image directory with sparse:latest, its one layer made by GNU tar (overrides e2e's)."""
    return sparse.image_dir(tmp_path_factory.mktemp("sparse-image"))


def sparse_maps(layer: Path) -> dict[str, tuple[int, list[tuple[int, int]]]]:
    """Each sparse file of ``layer``: its size and its data extents, (offset, length)."""
    found = {}
    with tarfile.open(layer) as tar:
        for member in tar.getmembers():
            if member.issparse():
                # (offset, length) pairs; typeshed does not say so.
                pairs: list[tuple[int, int]] = getattr(member, "sparse", None) or []
                found[member.name] = (member.size, [(o, n) for o, n in pairs if n])
    return found


def expected(size: int, extents: list[tuple[int, int]], off: int, whence: int) -> int | None:
    """What lseek should answer, by looking at each byte's extent; None for ENXIO."""
    if off >= size:
        return None
    for start, length in extents:
        if start + length <= off:
            continue
        if whence == os.SEEK_DATA:
            return max(start, off)
        if start > off:
            return off
        off = start + length
    return None if whence == os.SEEK_DATA else off


def offsets(size: int, extents: list[tuple[int, int]]) -> list[int]:
    """Offsets worth asking at: the file's ends, and around each extent's edges."""
    found = {0, 1, size - 1}
    for start, length in extents:
        found |= {start - 1, start, start + 1, start + length - 1, start + length}
        found |= {start + length + 1, start + length // 2}
    return sorted(o for o in found if 0 <= o < size)


def answer(fd: int, off: int, whence: int) -> int | None:
    try:
        return os.lseek(fd, off, whence)
    except OSError as error:
        assert error.errno == errno.ENXIO, (off, whence, error)
        return None


def assert_seeks_as_mapped(root: Path, maps: dict[str, tuple[int, list[tuple[int, int]]]]) -> None:
    assert set(sparse.FILES) | {BIG} <= set(maps)
    for path, (size, extents) in maps.items():
        fd = os.open(root / path, os.O_RDONLY)
        try:
            for whence in (os.SEEK_DATA, os.SEEK_HOLE):
                for off in offsets(size, extents):
                    got = answer(fd, off, whence)
                    assert got == expected(size, extents, off, whence), (path, off, whence)
                for off in (size, size + 1, size + GiB):
                    assert answer(fd, off, whence) is None, (path, off, whence)
        finally:
            os.close(fd)
    # The cases the kernel's fallback gets wrong are among those asked above.
    size, extents = maps[BIG]
    assert expected(size, extents, 0, os.SEEK_DATA) == GiB // 2
    assert expected(size, extents, 0, os.SEEK_HOLE) == 0
    assert expected(*maps["var/lib/all-hole"], 0, os.SEEK_DATA) is None
    # An ordinary file is one extent.
    plain = os.open(root / "etc/plain", os.O_RDONLY)
    try:
        length = os.fstat(plain).st_size
        assert os.lseek(plain, 0, os.SEEK_DATA) == 0
        assert os.lseek(plain, 5, os.SEEK_HOLE) == length
        assert answer(plain, length, os.SEEK_DATA) is None
    finally:
        os.close(plain)


def assert_seeks_alike(fd: int, reference: int, size: int) -> None:
    """``fd`` answers as ``reference`` at offsets around the written data and the file's ends."""
    for whence in (os.SEEK_DATA, os.SEEK_HOLE):
        for off in (0, 1, MiB, WRITE_AT - 1, WRITE_AT, WRITE_AT + 3, WRITE_AT + 4096, size - 1):
            assert answer(fd, off, whence) == answer(reference, off, whence), (off, whence)
        assert answer(fd, size, whence) is None


@pytest.mark.parametrize("no_open", ["0", "1"], ids=["handles", "no-open"])
@pytest.mark.parametrize("writable", [False, True], ids=["read-only", "writable"])
def test_seek_data_and_hole_follow_the_sparse_map(
    lazyfs: Lazyfs,
    image_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    writable: bool,
    no_open: str,
) -> None:
    monkeypatch.setenv("LAZYFS_FUSE_NO_OPEN", no_open)
    layer = image_dir.parent / "layer.tar"
    maps = sparse_maps(layer)
    point = tmp_path / "mnt"
    point.mkdir()
    try:
        lazyfs("mount", "sparse", str(point), *(["--writable"] if writable else []))
        assert_seeks_as_mapped(point, maps)
        if writable:
            reference_root = sparse.gnu_extract(layer, tmp_path / "reference")
            reference = os.open(reference_root / WRITTEN, os.O_RDWR)
            before = os.open(point / WRITTEN, os.O_RDONLY)  # opened while still lower
            try:
                with (point / WRITTEN).open("r+b") as written:  # copies the file up
                    written.seek(WRITE_AT)
                    written.write(b"written")
                os.pwrite(reference, b"written", WRITE_AT)
                size = os.fstat(reference).st_size
                assert os.lseek(reference, 0, os.SEEK_DATA) == WRITE_AT // 4096 * 4096
                assert_seeks_alike(before, reference, size)
                after = os.open(point / WRITTEN, os.O_RDONLY)
                try:
                    assert_seeks_alike(after, reference, size)
                finally:
                    os.close(after)
            finally:
                os.close(before)
                os.close(reference)
        lazyfs("umount", str(point))
        assert not is_mounted(point)
    finally:
        if is_mounted(point):
            lazyfs("umount", str(point), check=False)
