"""The kernel's lookup count of every inode a writable mount answered, kept compactly.

The kernel counts each entry it is given (a lookup, a create, an entry of
readdirplus) and later forgets the inode with that count.  A writable
mount must know when the count of an inode reaches zero: only then may it
let go of what it keeps for it (``lazyfs.fs.writable_names``).

A walk of the whole image makes the kernel hold an entry for every inode
it saw, so the counts must cost little each.  ``LookupCounts`` keeps the
counts of the tree's own inodes (1..``max_ino``, dense) as 4-byte cells of
an anonymous mapping: no memory is taken until a page is written, and a
page holds the counts of 1,024 neighbouring inodes, so a walk of a
million-inode image costs at most 4 MB, nothing per inode beyond that.
Inodes the mount made (numbered past the tree's), and a count that outgrows
its cell, are kept in a dict; a mount holds a node for each of those
anyway.
"""

from __future__ import annotations

import mmap

_CELL_MAX = (1 << 32) - 1


class LookupCounts:
    """Lookup counts by inode number; dense (a mapped array) for 1..``dense_up_to``."""

    def __init__(self, dense_up_to: int) -> None:
        self._size = max(dense_up_to + 1, 1)
        # Anonymous and zero-filled: untouched pages cost nothing.  Private:
        # the process's own memory, as smaps counts it (Anonymous).
        size = max(self._size * 4, mmap.PAGESIZE)
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        self._dense = memoryview(self._map).cast("I")  # unsigned 32-bit cells
        assert self._dense.itemsize == 4
        self._sparse: dict[int, int] = {}

    def get(self, ino: int) -> int:
        """The kernel's count of ``ino`` now; 0 for one it does not hold."""
        found = self._sparse.get(ino)
        if found is not None:
            return found
        return self._dense[ino] if 0 <= ino < self._size else 0

    def add(self, ino: int, count: int = 1) -> None:
        """``ino`` was given to the kernel ``count`` more times."""
        # Once per entry a lookup or readdir answers: the common case first.
        # A dense count is never kept in the dict as well (a cell moved there holds 0).
        if 0 <= ino < self._size:
            cell = self._dense[ino]
            if cell + count <= _CELL_MAX and (cell or ino not in self._sparse):
                self._dense[ino] = cell + count
                return
        self._set(ino, self.get(ino) + count)

    def take(self, ino: int, count: int) -> int:
        """The kernel forgot ``count`` lookups of ``ino``: what is left (never below 0)."""
        left = max(self.get(ino) - count, 0)
        self._set(ino, left)
        return left

    def sparse(self) -> int:
        """How many counts are kept outside the dense cells (for tests)."""
        return len(self._sparse)

    def _set(self, ino: int, count: int) -> None:
        if 0 <= ino < self._size and count <= _CELL_MAX:
            self._dense[ino] = count
            self._sparse.pop(ino, None)
            return
        if 0 <= ino < self._size:
            self._dense[ino] = 0
        if count:
            self._sparse[ino] = count
        else:
            self._sparse.pop(ino, None)
