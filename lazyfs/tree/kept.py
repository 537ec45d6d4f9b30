"""Merged trees kept in the store, so mounting an image merges its layers once.

A ``MergedTree`` is a pure function of its layers' indexes, in order.  An
index is a function of its layer blob and its format: a layer indexed from
its eStargz TOC has data-space offsets, the same layer indexed whole tar
offsets (``lazyfs.index.stored``).  So the tree of a chain of layer digests
goes stale when the code that makes it changes, or when a layer's index is
built again from another source; the file's header records both (a hash of
the index, merge and layer-rule modules; each layer's ``index_source``).
``merged_tree`` loads it from ``<layers_dir>/<top layer hex>/trees/<chain
hex>`` when it is there, and otherwise merges the indexes and stores the
tree for the next mount.  That turns the bulk of a mount's start (parsing
every index and replaying every entry) into one ``marshal.loads``.

The file is ``marshal`` data: fast, and written only by this module into the
root-owned store, which is trusted as the indexes are.  Its header names the
format, the Python version (marshal's format may change between versions),
that code hash, the chain and its indexes' sources; a file that does not match is merged again
and replaced, one that does not load is removed first.  It is written to a
temporary file and renamed into place, so a reader sees a whole file or
none; two mounts racing both write the same tree.  Not being able to store
it costs only speed: it is logged, not raised.  Blocking.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import marshal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lazyfs.index.model
import lazyfs.tree.merge
import providers.layer_entry
import providers.layer_rules
from lazyfs.index.model import LayerIndex
from lazyfs.index.stored import index_source
from lazyfs.store.atomic import write_atomic
from lazyfs.tree.merge import DataRef, Inode, InodeNo, MergedTree, merge
from providers.digest import Digest, hex_part
from providers.errors import UsageError
from providers.private_dir import private_dir

log = logging.getLogger(__name__)

# 2: a file's data carries a sparse file's extents.  3: the header names each
# layer's index source.
FORMAT = 3
_PYTHON = tuple(sys.version_info[:2])


def _rules() -> str:
    """A fingerprint of the code a tree depends on: the index, the merge and the layer rules.

    A kept tree made by other code is merged again, so a fixed merge rule or
    a newly refused layer reaches images that were mounted before.
    """
    digest = hashlib.sha256()
    for module in (
        lazyfs.index.model,
        lazyfs.tree.merge,
        providers.layer_entry,
        providers.layer_rules,
    ):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


_RULES = _rules()


def rules_fingerprint() -> str:
    """The fingerprint of the index, merge and layer-rule code every kept tree records."""
    return _RULES


def tree_path(layers_dir: Path, digests: Sequence[Digest]) -> Path:
    """Where the tree of layers ``digests`` (bottom first, at least one) is kept."""
    chain = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return layers_dir / hex_part(digests[-1]) / "trees" / chain


def merged_tree(
    layers_dir: Path,
    digests: Sequence[Digest],
    load_indexes: Callable[[], Sequence[LayerIndex]],
    *,
    sources: Sequence[str] | None = None,
) -> MergedTree:
    """The merged tree of ``digests``: kept, or merged from ``load_indexes()`` and kept.

    Kept only for the indexes stored now: ``sources``, what each layer's
    index was built from, read before the indexes are (default
    ``layer_sources``, for indexes all in ``layers_dir``).  Raises what
    ``load_indexes`` and ``merge`` raise.
    """
    if not digests:
        return merge(())  # an empty root: nothing worth keeping
    path = tree_path(layers_dir, digests)
    # Read before the indexes are: one replaced meanwhile leaves a tree
    # labelled with the sources before it, which no later mount takes.
    if sources is None:
        sources = layer_sources(layers_dir, digests)
    found = load_tree(path, digests, sources=sources)
    if found is not None:
        return found
    with cyclic_gc_paused():  # the indexes' entries and the tree: many objects, no cycles
        tree = merge(load_indexes())
    try:
        store_tree(path, digests, tree, sources=sources)
    except (OSError, UsageError) as error:  # UsageError: no directory where trees go
        log.warning("cannot keep the merged tree in %s: %s", path, error)
    return tree


def layer_sources(layers_dir: Path, digests: Sequence[Digest]) -> tuple[str, ...]:
    """What the stored index of each layer was built from (``index_source``), in order."""
    return tuple(index_source(layers_dir, digest) for digest in digests)


def load_tree(
    path: Path, digests: Sequence[Digest], *, sources: Sequence[str]
) -> MergedTree | None:
    """The tree kept at ``path`` for ``digests``; None if none is, or it is not current.

    Current: made by this code from indexes of these ``sources``
    (``layer_sources``).

    A damaged file is removed, so that the next mount's caller checks the
    indexes whole again (``lazyfs.fs.mount``).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("cannot read the merged tree %s: %s", path, error)
        return None
    try:
        with cyclic_gc_paused():
            header, rows, children, parents = marshal.loads(raw)
            if header != _header(digests, sources):
                return None
            return _tree(rows, children, parents)
    except Exception as error:  # any shape marshal can give back: merge again
        log.warning("removing the damaged merged tree %s: %r", path, error)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a tree's objects are made.

    They are many and acyclic: each collection their making sets off finds
    nothing to free, yet scans what the process holds, which in a mount
    process is every module it imported (some 10 ms of its start), and
    while a big image is merged or packed, the tree made so far (a third
    of the merge's time for 100,000 entries).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _header(digests: Sequence[Digest], sources: Sequence[str]) -> tuple[Any, ...]:
    return (FORMAT, _PYTHON, _RULES, tuple(digests), tuple(sources))


def store_tree(
    path: Path, digests: Sequence[Digest], tree: MergedTree, *, sources: Sequence[str]
) -> None:
    """Keep ``tree``, merged from indexes of ``sources``, at ``path``, whole or not at all.

    Raises OSError.
    """
    rows = [
        (
            *(inode.ino, inode.mode, inode.uid, inode.gid, inode.size, inode.mtime_ns),
            *(inode.nlink, inode.rdev, inode.target, inode.xattrs),
            None if inode.data is None else tuple(_data_fields(inode.data)),
        )
        for inode in tree.inodes.values()
    ]
    payload = marshal.dumps((_header(digests, sources), rows, tree.children, tree.parents))
    private_dir(path.parent)
    # Not durable: a tree torn by a crash fails to load and is merged again.
    write_atomic(path, payload, mode=0o600, prefix=".tree.", durable=False)


def _data_fields(data: DataRef) -> tuple[Any, ...]:
    return (data.digest, data.offset, data.size, data.extents)


def _tree(rows: list[Any], children: dict[Any, Any], parents: dict[Any, Any]) -> MergedTree:
    inodes: dict[InodeNo, Inode] = {}
    for ino, mode, uid, gid, size, mtime_ns, nlink, rdev, target, xattrs, data in rows:
        inodes[ino] = Inode(
            ino,
            mode,
            uid,
            gid,
            size,
            mtime_ns,
            nlink,
            rdev,
            target,
            xattrs,
            None if data is None else DataRef(*data),
        )
    by_name = {
        (parent, name): child for parent, listing in children.items() for name, child in listing
    }
    return MergedTree(inodes, children, parents, by_name)
