"""The lower tree as the FUSE operations read it: one interface, a merged or a packed tree.

``LowerTree`` is what a mount asks of the image's tree, by inode number and
one entry at a time, so that a tree served in place from a mapped file
(``lazyfs.tree.packed_read.PackedTree``) is never turned into Python objects
whole: every ``Inode``, name and listing it answers is made when asked for
and belongs to the caller.  ``as_lower`` gives the same interface over a
``MergedTree`` held in memory (``MergedLower``; tests and a mount that
could not keep its packed file), with the same answers.

Contracts, for either: inode numbers are 1..``max_ino()``, the root is
``ROOT_INO``; ``inode`` is None for a number not in the tree, and so is
``stat``, which is ``stat_of(inode(ino))`` without making the ``Inode`` (a
readdir asks it of every entry); ``entries``,
``child_count`` and ``parent`` raise KeyError for an inode that is no
directory; ``names_of`` gives every (directory, name) of an inode in
(directory, listing) order, () for the root, KeyError for a number not in
the tree; ``linked`` the inodes with more than one name; ``sparse_blocks``
the 512-byte units a GNU sparse file's data takes (``blocks_of``), None for
any other inode or number, answered at once by a tree without sparse files.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from lazyfs.tree.merge import ROOT_INO, DataRef, Inode, InodeNo, MergedTree
from providers.extents import Extent

Names = tuple[tuple[InodeNo, bytes], ...]
# What an entry's attributes are made of: mode, nlink, uid, gid, size, mtime_ns, rdev.
Stat = tuple[int, int, int, int, int, int, int]


class LowerTree(Protocol):
    """An image's merged tree, read one inode or entry at a time (see the module docstring)."""

    @property
    def inodes(self) -> Mapping[InodeNo, Inode]: ...

    def inode(self, ino: int) -> Inode | None: ...

    def stat(self, ino: int) -> Stat | None: ...

    def lookup(self, parent: InodeNo, name: bytes) -> InodeNo | None: ...

    def entries(self, directory: int, start: int = 0) -> Iterator[tuple[bytes, InodeNo]]: ...

    def child_count(self, directory: int) -> int: ...

    def parent(self, directory: int) -> InodeNo: ...

    def names_of(self, ino: int) -> Names: ...

    def linked(self) -> Iterator[InodeNo]: ...

    def max_ino(self) -> int: ...

    def data_blocks(self) -> int: ...

    def sparse_blocks(self, ino: int) -> int | None: ...


BLOCK_SIZE = 4096


class MergedLower:
    """``LowerTree`` over a ``MergedTree`` in memory.

    The names of each inode are found once, on the first ``names_of`` or
    ``linked``: a read-only mount never asks, a writable one asks for few.
    """

    def __init__(self, tree: MergedTree) -> None:
        self.merged = tree
        self.inodes: Mapping[InodeNo, Inode] = tree.inodes
        self._names: dict[InodeNo, list[tuple[InodeNo, bytes]]] | None = None

    def inode(self, ino: int) -> Inode | None:
        return self.merged.inodes.get(InodeNo(ino))

    def stat(self, ino: int) -> Stat | None:
        found = self.merged.inodes.get(InodeNo(ino))
        return None if found is None else stat_of(found)

    def lookup(self, parent: InodeNo, name: bytes) -> InodeNo | None:
        return self.merged.lookup(parent, name)

    def entries(self, directory: int, start: int = 0) -> Iterator[tuple[bytes, InodeNo]]:
        listing = self.merged.children[InodeNo(directory)]
        return iter(listing[max(start, 0) :])

    def child_count(self, directory: int) -> int:
        return len(self.merged.children[InodeNo(directory)])

    def parent(self, directory: int) -> InodeNo:
        return self.merged.parents[InodeNo(directory)]

    def names_of(self, ino: int) -> Names:
        if InodeNo(ino) not in self.merged.inodes:
            raise KeyError(ino)
        return tuple(self._all_names().get(InodeNo(ino), ()))

    def linked(self) -> Iterator[InodeNo]:
        return (ino for ino, names in self._all_names().items() if len(names) > 1)

    def max_ino(self) -> int:
        return max(self.merged.inodes)

    def data_blocks(self) -> int:
        return sum(
            (inode.size + BLOCK_SIZE - 1) // BLOCK_SIZE
            for inode in self.merged.inodes.values()
            if inode.data is not None
        )

    def sparse_blocks(self, ino: int) -> int | None:
        found = self.merged.inodes.get(InodeNo(ino))
        return None if found is None else blocks_of(found.data)

    def _all_names(self) -> dict[InodeNo, list[tuple[InodeNo, bytes]]]:
        if self._names is None:
            names: dict[InodeNo, list[tuple[InodeNo, bytes]]] = {}
            for parent in sorted(self.merged.children):
                for name, child in self.merged.children[parent]:
                    names.setdefault(child, []).append((parent, name))
            self._names = names
        return self._names


def stat_of(inode: Inode) -> Stat:
    """What ``LowerTree.stat`` answers for ``inode``."""
    return (inode.mode, inode.nlink, inode.uid, inode.gid, inode.size, inode.mtime_ns, inode.rdev)


def blocks_of(data: DataRef | None) -> int | None:
    """The st_blocks of a GNU sparse file's ``data``: its extents' bytes in 512-byte units.

    None for a file that is not sparse (and for no data): its st_blocks is
    its size in 512-byte units, as ever.  The sum is rounded up once, as a
    filesystem allocating 512 bytes at a time would count aligned extents;
    a real one rounds each extent to its own block size (4096 for most),
    so the copy backend's files count slightly more.
    """
    if data is None or data.extents is None:
        return None
    return extents_blocks(data.extents)


def extents_blocks(extents: Sequence[Extent]) -> int:
    """The bytes of data ``extents`` hold, in 512-byte units rounded up."""
    return (sum(length for _, length, _ in extents) + 511) // 512


def as_lower(tree: MergedTree | LowerTree) -> LowerTree:
    """``tree`` as a ``LowerTree``: a ``MergedTree`` wrapped, any other as it is."""
    return MergedLower(tree) if isinstance(tree, MergedTree) else tree


__all__ = [
    "ROOT_INO",
    "LowerTree",
    "MergedLower",
    "Names",
    "Stat",
    "as_lower",
    "blocks_of",
    "extents_blocks",
    "stat_of",
]
