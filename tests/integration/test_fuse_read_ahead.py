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
from tests.support.fuse_mounts import debug_mounted
from tests.support.images import Entry

pytestmark = pytest.mark.integration

DATA = bytes(range(256)) * (16 << 12)  # 16 MiB: a read-ahead window grows to its most
LAYER = [Entry("usr", "dir"), Entry("usr/big", data=DATA)]
KERNEL_DEFAULT = 128 << 10
READ = re.compile(rb"lazyfs\.requests: read\(\d+, \d+, (\d+)\) -> (\d+) bytes")


@pytest.fixture(params=["read-only", "writable"])
def mounted(request: pytest.FixtureRequest, tmp_path: Path, fuse_path: str) -> Iterator[Path]:
    """The layer mounted with ``--debug``, read-only or copy-on-write."""
    with debug_mounted(tmp_path, LAYER, writable=request.param == "writable") as point:
        yield point


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
