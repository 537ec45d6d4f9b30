"""A mount reads ahead ``READ_AHEAD_KIB``, not the kernel's default 128 KiB, from its first read.

A file read in order on a fresh mount arrives in reads as large as the
kernel's read-ahead window: with the default window none is over 128 KiB.
Checked by the reads a ``--debug`` mount logs, and by the device's
``read_ahead_kb``, on both views and both FUSE paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.fs import kernel_read_ahead
from lazyfs.fs import mount as lazy_mount
from lazyfs.store.disk import Store
from tests.support.blob_sources import store_files
from tests.support.fuse_mounts import need_fuse, unmount_all
from tests.support.images import Entry, write_layer

pytestmark = pytest.mark.integration

DATA = bytes(range(256)) * (16 << 12)  # 16 MiB: a read-ahead window grows to its most
LAYER = [Entry("usr", "dir"), Entry("usr/big", data=DATA)]
KERNEL_DEFAULT = 128 << 10
READ = re.compile(rb"lazyfs\.requests: read\(\d+, \d+, (\d+)\) -> (\d+) bytes")


@pytest.fixture(params=["read-only", "writable"])
def mounted(request: pytest.FixtureRequest, tmp_path: Path, fuse_path: str) -> Iterator[Path]:
    """The layer mounted with ``--debug``, read-only or copy-on-write."""
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


def test_a_file_read_in_order_arrives_in_reads_past_the_default_window(
    mounted: Path, tmp_path: Path
) -> None:
    assert (mounted / "usr" / "big").read_bytes() == DATA
    device = os.stat(mounted).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    assert int(knob.read_text()) == kernel_read_ahead.READ_AHEAD_KIB
    sizes = [int(asked) for asked, _ in READ.findall((tmp_path / "mount.log").read_bytes())]
    assert max(sizes) > KERNEL_DEFAULT
    assert max(sizes) <= kernel_read_ahead.READ_AHEAD_KIB << 10
