"""Image GC keeps the merged trees of layers read through published indexes, and no others.

A mount of a layer still in its registry reads the index published beside
its image, kept under ``published-indexes/`` (``lazyfs.index.published``),
and labels the layer of the tree it keeps with that index's source.  Stale
removal must take the same view: such a tree stays while the index does and
a mount would read it.  It goes once no mount will: the index set aside,
the layer's blob here with an index of its own (then a mount reads the
layer as a local one), or the chain's layers gone.
"""

from __future__ import annotations

from pathlib import Path

from lazyfs.gc.stale import remove_stale
from lazyfs.gc.trash import Trash
from lazyfs.index import estargz_chunks
from lazyfs.index.estargz_store import toc_layers_dir
from lazyfs.index.model import CHUNKS_NAME, LayerIndex, dumps
from lazyfs.index.published import SET_ASIDE_NAME, SPANS_NAME, published_layers_dir
from lazyfs.index.stored import index_path, index_source
from lazyfs.store.disk import Store
from lazyfs.tree.kept import store_tree, tree_path
from lazyfs.tree.merge import merge
from providers.digest import Digest

BASE = Digest("sha256:" + "a" * 64)
TOP = Digest("sha256:" + "b" * 64)
INDEX_BLOB = Digest("sha256:" + "c" * 64)
OTHER_BLOB = Digest("sha256:" + "d" * 64)
TOC = Digest("sha256:" + "e" * 64)


def write_index(layers_dir: Path, index: LayerIndex) -> None:
    path = index_path(layers_dir, index.digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(index))


def publish(store: Store, layer: Digest, blob: Digest) -> str:
    """Keep a published index of ``layer`` as ``store_published`` does; its source."""
    where = published_layers_dir(store.layers, layer, blob)
    write_index(where, LayerIndex(layer, "gzip", 0, ()))
    (where / layer.partition(":")[2] / SPANS_NAME).write_text("{}")
    source = index_source(where, layer)
    assert source == f"gzip published sha256-{blob.partition(':')[2]}"
    return source


def keep_tree(store: Store, digests: list[Digest], sources: tuple[str, ...]) -> Path:
    path = tree_path(store.layers, digests)
    store_tree(path, digests, merge(()), sources=sources)
    return path


def collect(store: Store) -> list[str]:
    return remove_stale(store, Trash(store.root, store.gc_dir), lambda name: False, ())


def relative(store: Store, *paths: Path) -> list[str]:
    return sorted(str(path.relative_to(store.root)) for path in paths)


def test_the_tree_of_a_chain_read_through_published_indexes_stays(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    # As the first lazy provision leaves them: both layers remote, each by its published index.
    sources = (publish(store, BASE, INDEX_BLOB), publish(store, TOP, INDEX_BLOB))
    kept = keep_tree(store, [BASE, TOP], sources)
    # A tree of the top layer alone, from another image's published index of it.
    other = keep_tree(store, [TOP], (publish(store, TOP, OTHER_BLOB),))

    assert collect(store) == []
    assert kept.is_file() and other.is_file()


def test_a_tree_of_a_published_index_no_mount_will_read_goes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    set_aside = keep_tree(store, [BASE, TOP], (publish(store, BASE, INDEX_BLOB),
                                               publish(store, TOP, INDEX_BLOB)))  # fmt: skip
    (published_layers_dir(store.layers, TOP, INDEX_BLOB) / SET_ASIDE_NAME).touch()
    # Never published: the label names an index that is not there.
    never = keep_tree(store, [TOP], (f"gzip published sha256-{'f' * 64}",))

    assert collect(store) == relative(store, set_aside, never)
    assert not set_aside.exists() and not never.exists()


def test_once_a_layer_is_local_with_its_own_index_trees_of_its_other_indexes_go(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store")
    published = publish(store, TOP, INDEX_BLOB)
    remote = keep_tree(store, [TOP], (published,))
    # The eStargz index of the base layer kept by TOC, as a lazy mount of it left it.
    toc_home = toc_layers_dir(store.layers, BASE, TOC)
    write_index(toc_home, LayerIndex(BASE, "estargz", 0, ()))
    table = estargz_chunks.ChunkTable(BASE, TOC, 100, ())
    (toc_home / BASE.partition(":")[2] / CHUNKS_NAME).write_text(estargz_chunks.dumps(table))
    by_toc = keep_tree(store, [BASE], (index_source(toc_home, BASE),))
    assert collect(store) == []  # still in their registry: read by those indexes
    # Adopted (lazyfs.provision.adopt): the blobs here, each with an index of its own.
    for digest in (BASE, TOP):
        store.blob_path(digest).parent.mkdir(parents=True, exist_ok=True)
        store.blob_path(digest).write_bytes(b"")
        write_index(store.layers, LayerIndex(digest, "gzip", 0, ()))
    local = keep_tree(store, [BASE, TOP], ("gzip", "gzip"))

    assert collect(store) == relative(store, remote, by_toc)
    assert local.is_file()


def test_the_tree_of_a_chain_whose_layers_are_gone_goes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    published = publish(store, TOP, INDEX_BLOB)
    # Its base layer's directory went (removed by an earlier pass, say).
    gone = keep_tree(store, [BASE, TOP], (f"gzip published sha256-{'c' * 64}", published))

    assert collect(store) == relative(store, gone)
