"""The trees an image's mounts keep in the store: for tests that make the next mount merge again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lazyfs.index.model import LayerIndex
from lazyfs.tree.kept import tree_path
from lazyfs.tree.lower import LowerTree
from lazyfs.tree.mapped import mount_tree, packed_files
from providers.digest import Digest


def kept_tree_files(layers_dir: Path, digests: Sequence[Digest]) -> list[Path]:
    """The kept tree (``lazyfs.tree.kept``) and its packed form (``lazyfs.tree.mapped``).

    The packed file's name holds its indexes' sources: the one there now,
    which must be the only one (a mount of ``digests`` made it).
    """
    packed = packed_files(layers_dir, digests)
    assert len(packed) == 1, packed
    return [tree_path(layers_dir, digests), *packed]


def drop_kept_trees(layers_dir: Path, digests: Sequence[Digest]) -> None:
    """Remove both, which must be there: the next mount merges the indexes again."""
    for path in kept_tree_files(layers_dir, digests):
        path.unlink()


def served_tree(layers_dir: Path, indexes: Sequence[LayerIndex]) -> LowerTree:
    """The tree a mount of ``indexes`` serves: packed into ``layers_dir``, then mapped."""
    digests = [index.digest for index in indexes]
    sources = [f"test index of {digest}" for digest in digests]
    return mount_tree(layers_dir, digests, lambda: list(indexes), sources=sources)
