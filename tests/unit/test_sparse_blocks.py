"""A GNU sparse file's st_blocks counts its data extents, not its holes, in either tree.

The sparse tree of ``tests.support.sparse`` is packed from one GNU tar
layer; both the packed tree and the merged tree in memory answer each
file's 512-byte units of data (``sparse_blocks``), and the read-only
operations report them as st_blocks: a 16 MiB file of one 292-byte extent
takes one filesystem block (GNU tar maps whole blocks), one that is all
hole none, while an ordinary file still counts its size.  A tree with no
sparse file answers None for every inode.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from lazyfs.blobs.ranges import ChunkCache
from lazyfs.fs.read_only import ReadOnlyOperations
from lazyfs.index.build import scan_tar
from lazyfs.index.model import LayerIndex
from lazyfs.tree.lower import LowerTree, MergedLower
from lazyfs.tree.merge import InodeNo, MergedTree, merge
from lazyfs.tree.packed_read import PackedTree
from lazyfs.tree.packed_write import write_packed
from providers.digest import digest_bytes
from tests.support import sparse
from tests.support.images import Entry, write_layer

BUILT_FROM = ("sparse blocks test",)
NO_CHUNKS = cast(ChunkCache, None)  # attributes read no file bytes


def index_of(tar: Path) -> LayerIndex:
    digest = digest_bytes(tar.read_bytes())
    return LayerIndex(digest, "none", tar.stat().st_size, scan_tar(tar, layer=str(digest)))


def ino_of(tree: MergedTree, path: str) -> InodeNo:
    ino = InodeNo(1)
    for name in path.split("/"):
        found = tree.lookup(ino, name.encode())
        assert found is not None, path
        ino = found
    return ino


def stored_blocks(tree: MergedTree, path: str) -> int:
    """The bytes the index's extents of ``path`` hold (GNU tar's map), in 512-byte units."""
    data = tree.inodes[ino_of(tree, path)].data
    assert data is not None and data.extents is not None, path
    return (sum(length for _, length, _ in data.extents) + 511) // 512


@pytest.fixture(params=["merged", "packed"])
def trees(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[MergedTree, LowerTree]:
    tar = sparse.gnu_tar(sparse.make_tree(tmp_path / "src"), tmp_path / "layer.tar", "1.0")
    merged = merge([index_of(tar)])
    if request.param == "merged":
        return merged, MergedLower(merged)
    write_packed(merged, BUILT_FROM, tmp_path / "tree")
    packed = PackedTree.open(tmp_path / "tree", BUILT_FROM)
    request.addfinalizer(packed.close)
    return merged, packed


def test_sparse_files_count_their_extents_and_others_their_size(
    trees: tuple[MergedTree, LowerTree],
) -> None:
    merged, lower = trees
    ops = ReadOnlyOperations(lower, NO_CHUNKS)
    for path, (size, _) in sparse.FILES.items():
        ino = ino_of(merged, path)
        want = stored_blocks(merged, path)
        assert lower.sparse_blocks(ino) == want, path
        inode = lower.inode(ino)
        assert inode is not None
        got = ops.attributes(inode)
        assert (got.st_size, got.st_blocks) == (size, want), path
    # GNU tar maps data in the source filesystem's blocks: one 4096-byte block of 16 MiB.
    assert stored_blocks(merged, "var/log/lastlog") <= 8
    assert stored_blocks(merged, "var/lib/all-hole") == 0
    plain = ino_of(merged, "etc/plain")
    assert lower.sparse_blocks(plain) is None and lower.sparse_blocks(ino_of(merged, "etc")) is None
    inode = lower.inode(plain)
    assert inode is not None
    assert ops.attributes(inode).st_blocks == (1100 + 511) // 512
    assert lower.sparse_blocks(lower.max_ino() + 1) is None


def test_a_tree_without_sparse_files_answers_none_for_every_inode(tmp_path: Path) -> None:
    entries = [Entry("etc", "dir", mode=0o755), Entry("etc/big", data=b"x" * 5000)]
    merged = merge([index_of(write_layer(entries, tmp_path / "layer.tar"))])
    write_packed(merged, BUILT_FROM, tmp_path / "tree")
    with PackedTree.open(tmp_path / "tree", BUILT_FROM) as packed:
        for lower in (packed, MergedLower(merged)):
            assert [lower.sparse_blocks(i) for i in range(1, 4)] == [None] * 3
            big = lower.inode(ino_of(merged, "etc/big"))
            assert big is not None
            assert ReadOnlyOperations(lower, NO_CHUNKS).attributes(big).st_blocks == 10
