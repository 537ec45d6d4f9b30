"""Merged trees kept in the store: the same tree back, merged once, never trusted blindly."""

from __future__ import annotations

import errno
import logging
import marshal
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from lazyfs.index.estargz_store import remote_layers_dir
from lazyfs.index.model import LayerIndex
from lazyfs.index.stored import ensure_index, index_source
from lazyfs.index.stored_remote import ensure_remote_index
from lazyfs.tree import kept as tree_cache
from lazyfs.tree.merge import ROOT_INO, MergedTree, merge
from providers.digest import Digest, digest_bytes
from providers.manifest import OCI_LAYER_GZIP, TOC_DIGEST_ANNOTATION, Layer
from tests.support.blob_sources import MemoryBlobs
from tests.support.estargz_writer import Blob, File, write_estargz
from tests.support.images import Entry, whiteout, write_layer

LAYERS = [
    [
        Entry("etc", "dir"),
        Entry("etc/passwd", data=b"root\n", xattrs={"user.a": b"\x00\xff"}),
        Entry("etc/gone", data=b"x"),
        Entry("hard", "hardlink", target="etc/passwd"),
        Entry("link", "symlink", target="etc"),
        Entry("null", "char", mode=0o666, rdev=(1, 3)),
    ],
    [whiteout("etc/gone"), Entry("etc/new", data=b"new\n", mode=0o600, uid=7)],
]


class Indexes:
    """``load_indexes`` for ``merged_tree``, counting its calls."""

    def __init__(self, indexes: Sequence[LayerIndex]) -> None:
        self.indexes = indexes
        self.calls = 0

    def __call__(self) -> Sequence[LayerIndex]:
        self.calls += 1
        return self.indexes


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, list[Digest], Indexes]:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    digests, indexes = [], []
    for i, entries in enumerate(LAYERS):
        blob = write_layer(entries, tmp_path / f"{i}.tar")
        digest = digest_bytes(blob.read_bytes())
        digests.append(digest)
        indexes.append(ensure_index(layers, tmp, digest, blob))
    return layers, digests, Indexes(indexes)


def same(a: MergedTree, b: MergedTree) -> bool:
    return (a.inodes, a.children, a.parents) == (b.inodes, b.children, b.parents) and all(
        a.lookup(parent, name) == child
        for parent, listing in b.children.items()
        for name, child in listing
    )


def test_the_second_mount_loads_the_tree_the_first_merged(
    chain: tuple[Path, list[Digest], Indexes],
) -> None:
    layers, digests, indexes = chain
    first = tree_cache.merged_tree(layers, digests, indexes)
    assert indexes.calls == 1 and same(first, merge(indexes.indexes))
    assert tree_cache.tree_path(layers, digests).is_file()
    second = tree_cache.merged_tree(layers, digests, indexes)
    assert indexes.calls == 1 and same(second, first)
    # Another chain (here: one layer less) is another tree.
    lower = tree_cache.merged_tree(layers, digests[:1], Indexes(indexes.indexes[:1]))
    etc = lower.lookup(ROOT_INO, b"etc")
    assert etc is not None and lower.lookup(etc, b"gone") is not None
    assert first.lookup(etc, b"gone") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: b"not marshal at all",
        lambda data: marshal.dumps(
            ((tree_cache.FORMAT + 1, *marshal.loads(data)[0][1:]), [], {}, {})
        ),
        lambda data: marshal.dumps(("header", "rows")),
        lambda data: marshal.dumps((marshal.loads(data)[0], [], [], {})),  # children: a list
    ],
    ids=["truncated", "garbage", "other-format", "other-shape", "right-header-bad-body"],
)
def test_a_damaged_or_foreign_tree_is_merged_again_and_replaced(
    chain: tuple[Path, list[Digest], Indexes], damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    layers, digests, indexes = chain
    good = tree_cache.merged_tree(layers, digests, indexes)
    path = tree_cache.tree_path(layers, digests)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with caplog.at_level(logging.WARNING):
        again = tree_cache.merged_tree(layers, digests, indexes)
    assert indexes.calls == 2 and same(again, good)
    sources = tree_cache.layer_sources(layers, digests)
    # Replaced by a good one.
    assert tree_cache.load_tree(path, digests, sources=sources) is not None


def test_a_store_it_cannot_write_costs_only_speed(
    chain: tuple[Path, list[Digest], Indexes], caplog: pytest.LogCaptureFixture
) -> None:
    layers, digests, indexes = chain
    trees = tree_cache.tree_path(layers, digests).parent
    trees.parent.mkdir(parents=True, exist_ok=True)
    trees.write_bytes(b"")  # a file where the directory should be: no tree can be kept
    with caplog.at_level(logging.WARNING):
        tree = tree_cache.merged_tree(layers, digests, indexes)
    assert same(tree, merge(indexes.indexes))
    assert "cannot keep the merged tree" in caplog.text
    assert os.path.getsize(trees) == 0


def test_a_tree_that_cannot_be_renamed_into_place_leaves_no_temporary(
    chain: tuple[Path, list[Digest], Indexes],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layers, digests, indexes = chain

    def refuse(source: object, target: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("lazyfs.store.atomic.os.rename", refuse)
    with caplog.at_level(logging.WARNING):
        tree = tree_cache.merged_tree(layers, digests, indexes)
    assert same(tree, merge(indexes.indexes))
    assert "cannot keep the merged tree" in caplog.text
    assert list(tree_cache.tree_path(layers, digests).parent.iterdir()) == []


def test_a_tree_made_by_other_code_is_merged_again(
    chain: tuple[Path, list[Digest], Indexes], monkeypatch: pytest.MonkeyPatch
) -> None:
    layers, digests, indexes = chain
    tree_cache.merged_tree(layers, digests, indexes)
    monkeypatch.setattr(tree_cache, "_RULES", "another merge")
    tree_cache.merged_tree(layers, digests, indexes)
    assert indexes.calls == 2


def _lazily_kept(
    layers: Path, tmp: Path, digest: Digest, served: Blob
) -> tuple[LayerIndex, tuple[str, ...]]:
    """The remote index of layer ``digest`` read from the eStargz ``served``, its tree kept."""
    annotations = ((TOC_DIGEST_ANNOTATION, served.toc_digest),)
    layer = Layer(digest, OCI_LAYER_GZIP, len(served.data), None, annotations)
    lazy = ensure_remote_index(layers, tmp, layer, MemoryBlobs({digest: served.data}))
    assert lazy is not None
    # As a mount process names the source of a remote layer's index: where it is kept.
    home = remote_layers_dir(layers, layer)
    assert home is not None
    sources = (index_source(home, digest),)
    tree_cache.merged_tree(layers, [digest], Indexes([lazy]), sources=sources)
    return lazy, sources


def _estargz(files: list[File]) -> Blob:
    return write_estargz(files, chunk_size=1000)


TWO = [File("a", b"a" * 3000, modtime=""), File("b", b"bee\n", modtime="")]


def test_a_tree_of_a_layer_indexed_in_another_format_since_is_merged_again(
    tmp_path: Path,
) -> None:
    # An eStargz index gives data-space offsets, the same layer indexed whole gives
    # tar offsets: a tree kept with the first must not serve reads through the second.
    # The TOC a registry served for the digest was not the blob's own (any image
    # can name any layer digest), so the verified blob is indexed in its format.
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    blob = _estargz(TWO)
    digest = digest_bytes(blob.data)
    lazy, _ = _lazily_kept(layers, tmp, digest, _estargz([*TWO, File("c", b"c", modtime="")]))
    path = tmp_path / "blob.gz"
    path.write_bytes(blob.data)
    whole = ensure_index(layers, tmp, digest, path)
    assert whole.compression == "gzip"
    assert {e.path: e.offset for e in whole.entries} != {e.path: e.offset for e in lazy.entries}
    indexes = Indexes([whole])
    tree = tree_cache.merged_tree(layers, [digest], indexes)
    assert indexes.calls == 1 and same(tree, merge([whole]))
    again = Indexes([whole])
    assert same(tree_cache.merged_tree(layers, [digest], again), tree) and again.calls == 0


def test_a_tree_kept_while_the_layer_was_remote_serves_it_once_local(tmp_path: Path) -> None:
    # The blob arrived whole and its own TOC gave the remote index: that index,
    # and so the tree kept with it, stay.
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    blob = _estargz(TWO)
    digest = digest_bytes(blob.data)
    lazy, sources = _lazily_kept(layers, tmp, digest, blob)
    path = tmp_path / "blob.gz"
    path.write_bytes(blob.data)
    assert ensure_index(layers, tmp, digest, path, own_toc=True) == lazy  # as adopted
    assert (index_source(layers, digest),) == sources
    indexes = Indexes([lazy])
    tree = tree_cache.merged_tree(layers, [digest], indexes, sources=sources)
    assert indexes.calls == 0 and same(tree, merge([lazy]))


def test_an_image_without_layers_is_an_empty_root(tmp_path: Path) -> None:
    tree = tree_cache.merged_tree(tmp_path, [], Indexes([]))
    assert tree.children == {ROOT_INO: ()} and list(tmp_path.iterdir()) == []
