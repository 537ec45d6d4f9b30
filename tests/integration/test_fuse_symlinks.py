"""A mount's symlinks: readlink answered once per symlink where pyfuse3 lets the kernel keep it.

The pyfuse3 that ``scripts/setup`` builds (patch 0002) asks the kernel for
``FUSE_CAP_CACHE_SYMLINKS``; a stock one cannot, and then every resolution
through a symlink is a readlink.  Both are correct: the targets never change.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.fs import caps as fuse_caps
from lazyfs.fs import mount as lazy_mount
from lazyfs.store.disk import Store
from tests.support.blob_sources import store_files
from tests.support.fuse_mounts import need_fuse, requests, unmount_all
from tests.support.images import Entry, write_layer

pytestmark = pytest.mark.integration

LAYER = [
    Entry("usr", "dir"),
    Entry("usr/lib", "dir"),
    Entry("usr/lib/libc.so.6", data=b"\x7fELF not really\n"),
    Entry("lib", "symlink", target="usr/lib"),
    Entry("usr/lib/libc.so", "symlink", target="libc.so.6"),
]
RESOLUTIONS = 5


@pytest.fixture(params=["read-only", "writable"])
def mounted(request: pytest.FixtureRequest, tmp_path: Path, fuse_path: str) -> Iterator[Path]:
    """The layer mounted with ``--debug``, read-only or copy-on-write (both cache symlinks)."""
    need_fuse()
    store = Store(tmp_path / "store")
    layers = store_files(store, [write_layer(LAYER, tmp_path / "layer.tar")])
    point = tmp_path / "m"
    point.mkdir()
    upper = work = None
    if request.param == "writable":
        upper, work = tmp_path / "upper", tmp_path / "work"
        upper.mkdir()
        work.mkdir()
    made: list[tuple[Path, int]] = []
    try:
        pid = lazy_mount.mount(
            layers,
            point,
            store=store.root,
            log_path=tmp_path / "mount.log",
            upper=upper,
            work=work,
            debug=True,
        )
        made.append((point, pid))
        yield point
    finally:
        unmount_all(made)


def test_each_symlink_is_read_once_where_the_kernel_keeps_targets(
    mounted: Path, tmp_path: Path
) -> None:
    for _ in range(RESOLUTIONS):
        assert os.readlink(mounted / "lib") == "usr/lib"
        assert (mounted / "lib" / "libc.so").read_bytes() == b"\x7fELF not really\n"
    log = (tmp_path / "mount.log").read_bytes()
    readlinks = requests(log)["readlink"]
    if fuse_caps.pyfuse3_caches_symlinks():
        assert b"symlink targets cached" in log
        assert readlinks == 2  # lib and libc.so, once each
    else:  # a stock pyfuse3: asked for every resolution, and answered the same each time
        assert b"symlink targets asked each time" in log
        assert readlinks >= 2 * RESOLUTIONS
