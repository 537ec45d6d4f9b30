"""The tree a mount serves: the image's packed tree file in the store, mapped and used in place.

``mount_tree`` opens ``<layers_dir>/<top layer hex>/packed-trees/<chain
hex>.<sources hex>`` (``packed_path``), the packed form (``lazyfs.tree.packed``) of the
merged tree ``lazyfs.tree.kept`` keeps beside it, and returns it mapped:
nothing is parsed, and every mount of the image shares its page-cache
pages.  The file records what it was built from (``built_from``): the
chain's layer digests, what each layer's index was built from, and the
fingerprint of the code that merges them (``lazyfs.tree.kept``'s), so a
tree of other indexes or other rules is never served.

When the file is missing, or refused at open (damaged: truncated, its
checksum or layout wrong; stale: another format version or built from
something else), the merged tree is taken as before (``kept.merged_tree``:
the marshal file, or the indexes merged) and written as a packed file by a
rename over whatever was there, then mapped.  A mapping of the old file
keeps reading the old file, so a mount serving it is not disturbed.  When
the packed file cannot be written or read back (a read-only store, a full
disk) the mount serves the merged tree from memory, as before, and says so
in its log: slower and private, never wrong.  Once the file is mapped, the
merged tree and the indexes it came from are garbage; for a big tree their
memory is handed back to the system (``_give_back``), so the first mount
keeps what the next ones keep, not the merge's high-water mark.

The file name holds the indexes' sources as well as the chain, because one
chain is mounted from indexes of more than one source at a time (a local
index, one published beside the image, an eStargz TOC; the first while a
background fetch completes, the others after): each source has a file of
its own, which neither evicts, so mounts of either share pages and merge
nothing.  The merge rules and the writer are left out of the name, so a
file of older code is stale and replaced in place, not left beside the new.

The packed files are outside ``trees/`` (which ``lazyfs.gc`` prunes by
the marshal files' headers): a stale one is replaced in place by the next
mount of its chain and sources, and all go with their layer's directory.
Blocking.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import lazyfs.tree.packed
import lazyfs.tree.packed_write
from lazyfs.index.model import LayerIndex
from lazyfs.tree import kept
from lazyfs.tree.lower import LowerTree, MergedLower
from lazyfs.tree.merge import merge
from lazyfs.tree.packed import PackedTreeRefused
from lazyfs.tree.packed_read import PackedTree
from lazyfs.tree.packed_write import write_packed
from providers.digest import Digest, hex_part
from providers.errors import UsageError
from providers.private_dir import private_dir

log = logging.getLogger(__name__)

PACKED_DIR = "packed-trees"
# The merged tree's size (inodes) from which its memory is given back once it
# is packed (``_give_back``): some 10 ms there, against half a second of merging
# and packing, and nothing spent on the few thousand entries of an ordinary image,
# whose merge leaves a few MB behind.
GIVE_BACK_AT = 20_000


def packed_path(layers_dir: Path, digests: Sequence[Digest], sources: Sequence[str]) -> Path:
    """Where the packed tree of layers ``digests`` (bottom first, at least one) is kept.

    One file per chain and per sources of its indexes (the module docstring says why).
    """
    layers = [f"{digest} {source}" for digest, source in zip(digests, sources, strict=True)]
    made_from = hashlib.sha256("\n".join(layers).encode()).hexdigest()[:32]
    return _packed_dir(layers_dir, digests) / f"{_chain(digests)}.{made_from}"


def packed_files(layers_dir: Path, digests: Sequence[Digest]) -> list[Path]:
    """The packed trees of layers ``digests`` kept now, whatever their indexes' sources."""
    try:
        names = os.listdir(_packed_dir(layers_dir, digests))
    except OSError:  # none kept, or no directory where it goes
        return []
    prefix = _chain(digests) + "."
    return sorted(_packed_dir(layers_dir, digests) / n for n in names if n.startswith(prefix))


def _packed_dir(layers_dir: Path, digests: Sequence[Digest]) -> Path:
    return layers_dir / hex_part(digests[-1]) / PACKED_DIR


def _chain(digests: Sequence[Digest]) -> str:
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _writer() -> str:
    """A fingerprint of the code that lays the file out: a fix to it reaches trees packed before."""
    digest = hashlib.sha256()
    for module in (lazyfs.tree.packed, lazyfs.tree.packed_write):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


_WRITER = _writer()


def built_from(digests: Sequence[Digest], sources: Sequence[str]) -> tuple[str, ...]:
    """What a packed tree of ``digests`` from indexes of ``sources`` records, and is held to."""
    return (
        f"merge rules {kept.rules_fingerprint()} writer {_WRITER}",
        *(f"{digest} {source}" for digest, source in zip(digests, sources, strict=True)),
    )


def tree_kept(layers_dir: Path, digests: Sequence[Digest]) -> bool:
    """Whether a tree of ``digests`` is kept (packed or merged): then indexes' headers suffice.

    Only a hint, checked no further: a tree that turns out damaged or stale
    is made from the indexes after all (``mount_tree``'s ``load_indexes``).
    """
    if not digests:
        return False
    return bool(packed_files(layers_dir, digests)) or kept.tree_path(layers_dir, digests).is_file()


def mount_tree(
    layers_dir: Path,
    digests: Sequence[Digest],
    load_indexes: Callable[[], Sequence[LayerIndex]],
    *,
    sources: Sequence[str],
) -> LowerTree:
    """The tree of ``digests`` to serve: its packed file mapped, built first when it must be.

    ``sources`` and ``load_indexes`` as ``kept.merged_tree`` takes them.
    Raises what ``load_indexes`` and ``merge`` raise; nothing for a packed
    file that cannot be kept (see the module docstring).
    """
    if not digests:
        return MergedLower(merge(()))  # an empty root: nothing worth keeping
    path = packed_path(layers_dir, digests, sources)
    expected = built_from(digests, sources)
    found = _open(path, expected)
    if found is not None:
        return found
    tree = kept.merged_tree(layers_dir, digests, load_indexes, sources=sources)
    try:
        private_dir(path.parent)
        with kept.cyclic_gc_paused():  # sections built from many small objects, no cycles
            write_packed(tree, expected, path)
    except (OSError, ValueError, UsageError) as error:  # UsageError: no directory for it
        log.warning("serving the merged tree from memory: cannot keep %s: %s", path, error)
        return MergedLower(tree)
    again = _open(path, expected)
    if again is None:
        log.warning("serving the merged tree from memory: %s did not read back", path)
        return MergedLower(tree)
    big = len(tree.inodes) >= GIVE_BACK_AT
    del tree  # the last reference: the caller handed the indexes over too
    if big:
        _give_back()
    return again


def _give_back() -> None:
    """Hand the memory of the merged tree and its indexes, garbage now, back to the system.

    Freed is not given back by itself.  Python returns an arena of its
    small objects only once every object in it is gone, and its free lists
    (spare tuples, lists, dicts kept for reuse) hold one in many of the
    arenas a big merge filled; only a full collection empties them (it
    finds no cycles here).  glibc keeps what its heap freed below its top
    until ``malloc_trim``.  Measured on a first mount of 200,000 files:
    with neither it kept 130 MB, with either alone 85 to 95 MB, with both
    40 MB, as a first mount of a small image does (the next mounts, which
    load no indexing or merging code, 29 MB).
    """
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, say): no such call
        return
    trim(0)


def _open(path: Path, expected: Sequence[str]) -> PackedTree | None:
    """The packed tree at ``path`` if it is whole and current; a refused one is removed."""
    try:
        return PackedTree.open(path, expected)
    except FileNotFoundError:
        return None
    except PackedTreeRefused as refused:
        log.warning("building the packed tree again: %s", refused)
        # Removed, not kept for a later look: the rename of the new one would replace it anyway.
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    except (OSError, ValueError) as error:
        log.warning("cannot read the packed tree %s: %s", path, error)
        return None
