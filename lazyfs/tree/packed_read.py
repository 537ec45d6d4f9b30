"""A packed tree file, mapped and read in place (the format is ``lazyfs.tree.packed``'s).

``PackedTree.open`` checks the file (``lazyfs.tree.packed``: magic,
version, size, checksum, section table, ``built_from``) and maps it
read-only and shared, so every mount of one image uses the same page-cache
pages.  It answers what the FUSE operations ask of a ``MergedTree``, with
the same names (``inodes``, ``children``, ``parents``, ``lookup``: the
``TreeReader`` both are) and the same answers, and adds what a mount can
ask without anything built per entry: ``inode``, ``entries`` from a
readdir offset, ``child_count``, ``names_of``, ``data_blocks``, ``sparse_blocks``.

What it holds does not grow with the tree: the mapping, the header, the
layer digests and ``built_from``.  Every ``Inode``, name and listing is
made when asked for and belongs to the caller.  Lookups are binary searches
over a directory's names in the mapped bytes; inode numbers index the node
records.  Reading from several threads at once is safe; ``close`` unmaps,
and must come after the last read (a read after it raises ValueError).
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from lazyfs.tree import packed as fmt
from lazyfs.tree.lower import Stat, extents_blocks
from lazyfs.tree.merge import ROOT_INO, DataRef, Inode, InodeNo
from providers.digest import Digest
from providers.extents import Extent

Listing = tuple[tuple[bytes, InodeNo], ...]
_CHECK_CHUNK = 1 << 20
_S = fmt.Section
_DIRENT = fmt.DIRENT.size


class TreeReader(Protocol):
    """What the FUSE operations read of a tree; ``MergedTree`` and ``PackedTree`` are both one."""

    @property
    def inodes(self) -> Mapping[InodeNo, Inode]: ...

    @property
    def children(self) -> Mapping[InodeNo, Listing]: ...

    @property
    def parents(self) -> Mapping[InodeNo, InodeNo]: ...

    def lookup(self, parent: InodeNo, name: bytes) -> InodeNo | None: ...


class PackedTree:
    """A packed tree file, mapped: the read side of a ``MergedTree``.  Use ``open``."""

    def __init__(
        self, path: Path, mapped: mmap.mmap, header: fmt.Header, built_from: tuple[str, ...]
    ) -> None:
        self.path = path
        self.built_from = built_from
        self._map = mapped
        self._header = header
        self._count = header.inode_count
        self._nodes = header.sections[_S.NODES][0]
        self._dirents = header.sections[_S.DIRENTS][0]
        self._links = header.sections[_S.LINKS]
        self._data = header.sections[_S.DATA][0]
        self._extents = header.sections[_S.EXTENTS][0]
        # Every sparse file stores at least its extent count there: none, no sparse file.
        self._any_sparse = header.sections[_S.EXTENTS][1] > 0
        self._xattrs = header.sections[_S.XATTRS][0]
        self._strings = header.sections[_S.STRINGS][0]
        self._layers = tuple(Digest(text) for text in _strings_of(mapped, header, _S.LAYERS, path))
        self.inodes: Mapping[InodeNo, Inode] = _Inodes(self)
        self.children: Mapping[InodeNo, Listing] = _Children(self)
        self.parents: Mapping[InodeNo, InodeNo] = _Parents(self)

    @classmethod
    def open(cls, path: Path, expected_built_from: Sequence[str]) -> PackedTree:
        """The tree at ``path``, if it is whole, current and built from ``expected_built_from``.

        Raises DamagedPackedTree or StalePackedTree (both PackedTreeRefused)
        for a file to build again, OSError when it cannot be read.
        """
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            header = fmt.parse_header(os.pread(fd, fmt.PRELUDE, 0), size, path)
            if _checksum(fd, size) != header.checksum:
                raise fmt.DamagedPackedTree(path, "its checksum does not match its bytes")
            fmt.check_sections(header, path)
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)  # keeps its own fd
        finally:
            os.close(fd)
        try:
            built_from = _strings_of(mapped, header, _S.BUILT_FROM, path)
            if built_from != tuple(expected_built_from):
                raise fmt.StalePackedTree(
                    path, f"built from {list(built_from)}, not {list(expected_built_from)}"
                )
            return cls(path, mapped, header, built_from)
        except BaseException:
            mapped.close()
            raise

    def close(self) -> None:
        self._map.close()

    def __enter__(self) -> PackedTree:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the questions ---------------------------------------------------------------------

    def lookup(self, parent: InodeNo, name: bytes) -> InodeNo | None:
        """The inode named ``name`` in directory ``parent``; None if none is (or no such dir)."""
        payload = self._payload(parent)
        if payload is None or not payload[0] & fmt.DIRECTORY:
            return None
        flags, low, count = payload
        by_text = bool(flags & fmt.NAMES_BY_TEXT)
        wanted: bytes | str = os.fsdecode(name) if by_text else name
        high = low + count
        while low < high:
            middle = (low + high) // 2
            at, length, child = fmt.DIRENT.unpack_from(self._map, self._dirents + middle * _DIRENT)
            raw = self._map[self._strings + at : self._strings + at + length]
            here: bytes | str = os.fsdecode(raw) if by_text else raw
            if here == wanted:
                return InodeNo(child)
            if here < wanted:  # type: ignore[operator]  # both bytes or both str
                low = middle + 1
            else:
                high = middle
        return None

    def inode(self, ino: int) -> Inode | None:
        """Inode ``ino`` with everything it has; None for a number not in the tree."""
        record = self._record(ino)
        if record is None:
            return None
        mode, flags, nlink, uid, gid, mtime_ns, size, _, _, ref, count, xattrs = record
        return Inode(
            ino=InodeNo(ino),
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            mtime_ns=mtime_ns,
            nlink=nlink,
            rdev=ref if flags & fmt.RDEV else 0,
            target=self._string(ref, count) if flags & fmt.TARGET else b"",
            xattrs=self._xattr_pairs(xattrs),
            data=self._data_ref(ref) if flags & fmt.HAS_DATA else None,
        )

    def stat(self, ino: int) -> Stat | None:
        """What ``inode(ino)`` says of its attributes, from its record alone; None as there."""
        record = self._record(ino)
        if record is None:
            return None
        mode, flags, nlink, uid, gid, mtime_ns, size, _, _, ref, _, _ = record
        return mode, nlink, uid, gid, size, mtime_ns, ref if flags & fmt.RDEV else 0

    def entries(self, directory: int, start: int = 0) -> Iterator[tuple[bytes, InodeNo]]:
        """The names of ``directory`` from position ``start`` on, in listing order.

        For readdir: the position of an entry is its offset in the listing,
        so a readdir resumes at ``start`` without building the listing.
        KeyError if ``directory`` is not one.
        """
        first, count = self._listing(directory)
        for number in range(first + max(start, 0), first + count):
            at, length, child = fmt.DIRENT.unpack_from(self._map, self._dirents + number * _DIRENT)
            yield self._string(at, length), InodeNo(child)

    def child_count(self, directory: int) -> int:
        """How many names ``directory`` has; KeyError if it is not one."""
        return self._listing(directory)[1]

    def names_of(self, ino: int) -> tuple[tuple[InodeNo, bytes], ...]:
        """Every (directory, name) of ``ino``, in (directory, listing) order; () for the root.

        KeyError for a number not in the tree.
        """
        record = self._record(ino)
        if record is None:
            raise KeyError(ino)
        if ino == ROOT_INO:
            return ()
        names = [(InodeNo(record[7]), self._dirent_name(record[8]))]
        if record[1] & fmt.MORE_NAMES:
            offset, length = self._links
            low, high = 0, length // fmt.LINK.size
            while low < high:  # the first extra name of ino
                middle = (low + high) // 2
                if fmt.LINK.unpack_from(self._map, offset + middle * fmt.LINK.size)[0] < ino:
                    low = middle + 1
                else:
                    high = middle
            for number in range(low, length // fmt.LINK.size):
                linked, parent, dirent = fmt.LINK.unpack_from(
                    self._map, offset + number * fmt.LINK.size
                )
                if linked != ino:
                    break
                names.append((InodeNo(parent), self._dirent_name(dirent)))
        return tuple(names)

    def data_blocks(self) -> int:
        """The 4096-byte blocks of all files with data, each rounded up, as statfs counts."""
        return self._header.data_blocks

    def sparse_blocks(self, ino: int) -> int | None:
        """``ino``'s data in 512-byte units if it is sparse, else None (at once if none is)."""
        payload = self._payload(ino) if self._any_sparse else None
        if payload is None or not payload[0] & fmt.HAS_DATA:
            return None
        record = fmt.DATA.unpack_from(self._map, self._data + payload[1] * fmt.DATA.size)
        return extents_blocks(self._extents_at(record[4])) if record[1] & fmt.SPARSE else None

    def parent(self, directory: int) -> InodeNo:
        """The parent of ``directory`` (the root's is itself); KeyError if it is not one."""
        return self.parents[InodeNo(directory)]

    def linked(self) -> Iterator[InodeNo]:
        """The inodes with more than one name, in order (each once)."""
        offset, length = self._links
        last = 0
        for number in range(length // fmt.LINK.size):
            (ino,) = fmt.COUNT32.unpack_from(self._map, offset + number * fmt.LINK.size)
            if ino != last:
                last = ino
                yield InodeNo(ino)

    def max_ino(self) -> int:
        """The highest inode number: inodes are 1..n."""
        return self._count

    def __len__(self) -> int:
        return self._count

    # -- reading records -------------------------------------------------------------------

    def _record(self, ino: int) -> tuple[int, ...] | None:
        if not 1 <= ino <= self._count:
            return None
        return fmt.NODE.unpack_from(self._map, self._nodes + (ino - 1) * fmt.NODE.size)

    def _payload(self, ino: int) -> tuple[int, int, int] | None:
        """Flags, ref and count of ``ino``'s record; the rest is not read."""
        if not 1 <= ino <= self._count:
            return None
        return fmt.NODE_PAYLOAD.unpack_from(self._map, self._nodes + (ino - 1) * fmt.NODE.size)

    def _is_directory(self, ino: int) -> bool:
        payload = self._payload(ino)
        return payload is not None and bool(payload[0] & fmt.DIRECTORY)

    def _listing(self, directory: int) -> tuple[int, int]:
        payload = self._payload(directory)
        if payload is None or not payload[0] & fmt.DIRECTORY:
            raise KeyError(directory)
        return payload[1], payload[2]

    def _string(self, at: int, length: int) -> bytes:
        return self._map[self._strings + at : self._strings + at + length]

    def _dirent_name(self, number: int) -> bytes:
        at, length, _ = fmt.DIRENT.unpack_from(self._map, self._dirents + number * _DIRENT)
        return self._string(at, length)

    def _xattr_pairs(self, at: int) -> tuple[tuple[bytes, bytes], ...]:
        position = self._xattrs + at
        (count,) = fmt.COUNT32.unpack_from(self._map, position)
        position += fmt.COUNT32.size
        pairs = []
        for _ in range(count):
            key_length, value_length = fmt.XATTR.unpack_from(self._map, position)
            position += fmt.XATTR.size
            key = self._map[position : position + key_length]
            position += key_length
            pairs.append((key, self._map[position : position + value_length]))
            position += value_length
        return tuple(pairs)

    def _data_ref(self, number: int) -> DataRef:
        layer, flags, offset, size, extents_at = fmt.DATA.unpack_from(
            self._map, self._data + number * fmt.DATA.size
        )
        extents = self._extents_at(extents_at) if flags & fmt.SPARSE else None
        return DataRef(self._layers[layer], offset, size, extents)

    def _extents_at(self, at: int) -> tuple[Extent, ...]:
        """The extents stored at offset ``at`` of EXTENTS: a count, then the extents."""
        (count,) = fmt.COUNT64.unpack_from(self._map, self._extents + at)
        first, size = self._extents + at + fmt.COUNT64.size, fmt.EXTENT.size
        return tuple(fmt.EXTENT.unpack_from(self._map, first + n * size) for n in range(count))


def _checksum(fd: int, size: int) -> int:
    """CRC-32 of the file from ``CHECKED_FROM`` on, read through one small buffer.

    Read, not mapped: checking touches no page of the mapping, so a mount
    holds only the pages it uses.
    """
    buffer = bytearray(_CHECK_CHUNK)
    view = memoryview(buffer)
    checksum, offset = 0, fmt.CHECKED_FROM
    while offset < size:
        got = os.preadv(fd, [view[: min(_CHECK_CHUNK, size - offset)]], offset)
        if not got:
            break  # shrank under us: the sum will not match
        checksum = zlib.crc32(view[:got], checksum)
        offset += got
    return checksum


def _strings_of(
    mapped: mmap.mmap, header: fmt.Header, section: fmt.Section, path: Path
) -> tuple[str, ...]:
    offset, length = header.sections[section]
    return fmt.unpack_strings(mapped[offset : offset + length], path)


class _Inodes(Mapping[InodeNo, Inode]):
    """``MergedTree.inodes`` of a packed tree: inodes 1..n, each made when asked for."""

    def __init__(self, tree: PackedTree) -> None:
        self._tree = tree

    def __getitem__(self, ino: InodeNo) -> Inode:
        found = self._tree.inode(ino)
        if found is None:
            raise KeyError(ino)
        return found

    def __contains__(self, ino: object) -> bool:
        return isinstance(ino, int) and 1 <= ino <= len(self._tree)

    def __iter__(self) -> Iterator[InodeNo]:
        return map(InodeNo, range(1, len(self._tree) + 1))

    def __len__(self) -> int:
        return len(self._tree)


class _Children(Mapping[InodeNo, Listing]):
    """``MergedTree.children``: each directory's (name, inode) in listing order, made when asked.

    Iterating walks every node record: for a whole-tree pass, not a mount's.
    """

    def __init__(self, tree: PackedTree) -> None:
        self._tree = tree

    def __getitem__(self, directory: InodeNo) -> Listing:
        return tuple(self._tree.entries(directory))

    def __contains__(self, ino: object) -> bool:
        return isinstance(ino, int) and self._tree._is_directory(ino)

    def __iter__(self) -> Iterator[InodeNo]:
        tree = self._tree
        return (InodeNo(ino) for ino in range(1, len(tree) + 1) if tree._is_directory(ino))

    def __len__(self) -> int:
        return self._tree._header.dir_count


class _Parents(Mapping[InodeNo, InodeNo]):
    """``MergedTree.parents``: each directory's parent; the root is its own."""

    def __init__(self, tree: PackedTree) -> None:
        self._tree = tree
        self._children = _Children(tree)

    def __getitem__(self, directory: InodeNo) -> InodeNo:
        record = self._tree._record(directory)
        if record is None or not record[1] & fmt.DIRECTORY:
            raise KeyError(directory)
        return InodeNo(record[7])

    def __iter__(self) -> Iterator[InodeNo]:
        return iter(self._children)

    def __len__(self) -> int:
        return len(self._children)
