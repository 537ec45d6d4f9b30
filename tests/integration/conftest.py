"""Fixtures shared by the integration tests' modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cow_mounts import CowMounts


@pytest.fixture
def mounts(tmp_path: Path, fuse_path: str, mount_start: str) -> Iterator[CowMounts]:
    """Writable mounts (and kernel overlayfs ones), all taken down afterwards.

    On both FUSE paths and both ways mount processes start; a module whose tests
    want other parameters defines a ``mounts`` of its own, which takes precedence.
    """
    made = CowMounts(tmp_path)
    try:
        yield made
    finally:
        made.close()
