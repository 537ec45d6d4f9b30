"""A writable view deeper than Python's recursion limit, in-process (no mount)."""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest

from lazyfs.blobs.ranges import ChunkCache, open_layers
from lazyfs.fs.upper import Upper
from lazyfs.fs.writable import WritableOperations
from lazyfs.index.stored import check_data_present, ensure_index
from lazyfs.tree.merge import ROOT_INO, merge
from providers.digest import digest_bytes
from providers.fstree import remove_tree
from tests.support.images import Entry, write_layer
from tests.support.writable_ops import CTX, name, setting

DEPTH = sys.getrecursionlimit() + 200


@pytest.fixture
def where(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, its deep upper removed afterwards: pytest's own clean-up recurses."""
    yield tmp_path
    remove_tree(tmp_path / "upper")


def writable(tmp_path: Path, entries: list[Entry]) -> WritableOperations:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    blob = write_layer(entries, tmp_path / "0.tar")
    digest = digest_bytes(blob.read_bytes())
    index = ensure_index(layers, tmp, digest, blob)
    source = open_layers({digest: check_data_present(layers, blob, index)})
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return WritableOperations(Upper(merge([index]), upper, work, source), ChunkCache(source))


def depth_on_disk(top: Path) -> int:
    """How many nested ``d`` directories ``top`` holds, walked fd by fd."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        while True:
            try:
                inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                return depth
            os.close(fd)
            fd, depth = inner, depth + 1
    finally:
        os.close(fd)


async def test_mkdir_nests_past_the_recursion_limit(where: Path) -> None:
    ops = writable(where, [Entry("etc", "dir")])
    parent = pyfuse3.InodeT(ROOT_INO)
    for _ in range(DEPTH):
        parent = (await ops.mkdir(parent, name("d"), 0o755, CTX)).st_ino
    made = await ops.create(parent, name("f"), 0o644, os.O_WRONLY, CTX)
    await ops.release(made[0].fh)
    assert depth_on_disk(ops.upper.upper) == DEPTH


async def test_a_deep_lower_directory_copies_up_with_all_its_parents(where: Path) -> None:
    entries, path = [], ""
    for _ in range(DEPTH):
        path = f"{path}/d" if path else "d"
        entries.append(Entry(path, "dir", mode=0o755))
    ops = writable(where, entries)
    bottom = pyfuse3.InodeT(ROOT_INO)
    for _ in range(DEPTH):
        bottom = (await ops.lookup(bottom, name("d"), CTX)).st_ino
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o700)
    got = await ops.setattr(bottom, attr, setting("mode"), None, CTX)
    assert got.st_mode & 0o7777 == 0o700
    assert depth_on_disk(ops.upper.upper) == DEPTH


async def test_upper_paths_past_path_max_work(where: Path) -> None:
    """The upper is worked on through directory fds: no path length limits it."""
    ops = writable(where, [Entry("etc", "dir")])
    parent = pyfuse3.InodeT(ROOT_INO)
    long = name("n" * 250)
    for _ in range(4096 // 250 + 1):
        parent = (await ops.mkdir(parent, long, 0o755, CTX)).st_ino
    made = await ops.create(parent, name("f"), 0o644, os.O_WRONLY, CTX)
    assert await ops.write(made[0].fh, 0, b"deep") == 4
    await ops.release(made[0].fh)
    await ops.rename(parent, name("f"), parent, name("g"), 0, CTX)
    await ops.unlink(parent, name("g"), CTX)
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await ops.lookup(parent, name("n" * 256), CTX)
    assert caught.value.errno == errno.ENAMETOOLONG
