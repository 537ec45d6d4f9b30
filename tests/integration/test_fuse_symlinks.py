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
from tests.support.fuse_mounts import debug_mounted, requests
from tests.support.images import Entry

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
    with debug_mounted(tmp_path, LAYER, writable=request.param == "writable") as point:
        yield point


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
