"""A layer's opaque marker over its own directories deeper than Python's stack.

Its marker hides what lower layers made and spares what the layer made
itself, however deep: both the copy backend's tree and the merged tree a
fuse mount serves went down those directories by recursion.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.fstree import remove_tree
from tests.support import fuse_paths
from tests.support.images import Entry, opaque
from tests.support.tar_members import apply_all, layer, reg
from tests.support.writable_ops import CTX, ino, ops_of_layers

DEPTH = 1200  # past the interpreter's recursion limit (1000)
DEEP = "/".join(["a"] * DEPTH)


@pytest.fixture
def few_descriptors() -> Iterator[None]:
    """Fewer descriptors than levels: the copy backend must not hold one per level."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def read_deep(root: Path) -> bytes:
    """The deep file's bytes, reached one level at a time (its path is past PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            inner = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        file = os.open("f", os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(file, 100)
        finally:
            os.close(file)
    finally:
        os.close(fd)


@pytest.mark.usefixtures("few_descriptors")
def test_the_copy_backends_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    try:
        apply_all(
            root,
            layer(reg("d/x/old", b"1")),
            layer(reg(f"d/{DEEP}/f", b"2"), reg("d/.wh..wh..opq")),
        )
        assert os.listdir(root / "d") == ["a"]
        assert read_deep(root / "d") == b"2"
    finally:
        remove_tree(root)  # pytest's own clean-up of old runs recurses


@pytest.mark.usefixtures("few_descriptors")
def test_a_whiteout_over_a_lower_layers_deep_tree_removes_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    try:
        apply_all(root, layer(reg(f"d/{DEEP}/f", b"1"), reg("e")), layer(reg(".wh.d")))
        assert os.listdir(root) == ["e"]
    finally:
        remove_tree(root)


async def test_the_merged_tree_a_fuse_mount_serves(tmp_path: Path) -> None:
    lower = [Entry("d", "dir"), Entry("d/x", "dir"), Entry("d/x/old", data=b"1")]
    upper = [Entry(f"d/{DEEP}/f", data=b"2"), opaque("d")]
    ops = ops_of_layers(tmp_path, fuse_paths.OPEN, [lower, upper])
    assert [entry for entry, _ in ops.upper.listing(await ino(ops, "d"))] == [b"a"]
    info = await ops.open(await ino(ops, f"d/{DEEP}/f"), os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 0, 100) == b"2"
    await ops.release(info.fh)
