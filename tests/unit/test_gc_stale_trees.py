"""Image GC keeps the merged trees a mount would load, lazily read eStargz layers too.

A mount labels each layer of a kept tree with the source of the index it
reads (``lazyfs.fs.mount_main``): a local layer's index in its own
directory, a remote eStargz layer's one kept by TOC under
``estargz-tocs/`` (``lazyfs.index.estargz_store``).  Stale removal must
take the same view: such a tree stays, one whose sources changed goes.
"""

from __future__ import annotations

from pathlib import Path

from lazyfs.gc.stale import remove_stale
from lazyfs.gc.trash import Trash
from lazyfs.index import estargz_chunks
from lazyfs.index.estargz_store import toc_layers_dir
from lazyfs.index.model import CHUNKS_NAME, LayerIndex, dumps
from lazyfs.index.stored import index_path, index_source
from lazyfs.store.disk import Store
from lazyfs.tree.kept import store_tree, tree_path
from lazyfs.tree.merge import merge
from providers.digest import Digest

LOCAL = Digest("sha256:" + "a" * 64)
REMOTE = Digest("sha256:" + "b" * 64)
TOC = Digest("sha256:" + "c" * 64)


def write_index(layers_dir: Path, index: LayerIndex) -> None:
    path = index_path(layers_dir, index.digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(index))


def keep_tree(layers_dir: Path, digests: list[Digest], sources: tuple[str, ...]) -> Path:
    path = tree_path(layers_dir, digests)
    store_tree(path, digests, merge(()), sources=sources)
    return path


def test_a_pass_keeps_the_tree_of_a_lazy_estargz_chain_and_drops_stale_ones(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store")
    write_index(store.layers, LayerIndex(LOCAL, "none", 0, ()))
    # The remote layer's index as ensure_remote_index keeps it: by TOC, with its chunk table.
    remote_home = toc_layers_dir(store.layers, REMOTE, TOC)
    write_index(remote_home, LayerIndex(REMOTE, "estargz", 0, ()))
    table = estargz_chunks.ChunkTable(REMOTE, TOC, 100, ())
    (remote_home / REMOTE.partition(":")[2] / CHUNKS_NAME).write_text(estargz_chunks.dumps(table))
    # As the mount labels it: each layer by its own index's source.
    sources = (index_source(store.layers, LOCAL), index_source(remote_home, REMOTE))
    assert sources == ("none", f"estargz {TOC}")
    kept = keep_tree(store.layers, [LOCAL, REMOTE], sources)
    # Made from an index of another TOC, since replaced; and from a local index since rebuilt.
    other_toc = keep_tree(store.layers, [REMOTE], (f"estargz sha256:{'d' * 64}",))
    rebuilt = keep_tree(store.layers, [LOCAL], ("gzip",))

    trash = Trash(store.root, store.gc_dir)
    assert store.gc_dir.is_dir()  # made with the store
    removed = remove_stale(store, trash, lambda name: False, ())

    assert kept.is_file()
    assert not other_toc.exists() and not rebuilt.exists()
    assert sorted(removed) == sorted(
        str(path.relative_to(store.root)) for path in (other_toc, rebuilt)
    )
