"""Writing a merged tree as a packed tree file (the format is ``lazyfs.tree.packed``'s).

``write_packed`` holds a tree to what the format can say and refuses the
rest with ValueError before it writes anything: inode numbers must be
1..n, directories exactly the inodes with a listing, each listing sorted
(by bytes, or by ``os.fsdecode`` as ``lazyfs.tree.merge`` sorts names that
are not UTF-8), every inode but the root named, and each inode with at most
one of children, a symlink target, an rdev and data.  Every tree ``merge``
makes passes.  Blocking.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import stat
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from lazyfs.store.atomic import staged_file
from lazyfs.tree import packed as fmt
from lazyfs.tree.merge import ROOT_INO, DataRef, Inode, InodeNo, MergedTree
from providers.extents import Extent


def write_packed(tree: MergedTree, built_from: Sequence[str], path: Path) -> None:
    """Write ``tree`` to ``path`` as a packed tree that records ``built_from``; atomic.

    ``built_from`` names what the tree is a function of (say the layer
    digests bottom first and a fingerprint of the merge rules): the reader
    refuses the file unless its caller expects exactly these strings.
    Readers see the old file or the new one, never a part
    (``lazyfs.store.atomic``: a temporary file beside ``path``, fsynced and
    renamed over it).
    Raises ValueError for a tree the format cannot hold, OSError.
    """
    chunks = _Packer(tree).chunks(built_from)
    with staged_file(path.parent, mode=0o600, prefix=".packed.") as staged:
        for chunk in chunks:
            staged.file.write(chunk)
        staged.commit(path)


class _Packer:
    """The sections of one tree, built in memory, then laid out with the header."""

    def __init__(self, tree: MergedTree) -> None:
        self.tree = tree
        self.count = len(tree.inodes)
        if any(InodeNo(ino) not in tree.inodes for ino in range(1, self.count + 1)):
            raise ValueError("inode numbers are not 1..n")
        self.strings = bytearray()
        self.string_at: dict[bytes, int] = {}
        self.dirents = bytearray()
        self.xattrs = bytearray(fmt.COUNT32.pack(0))  # offset 0: the empty list
        self.xattrs_at: dict[tuple[tuple[bytes, bytes], ...], int] = {(): 0}
        self.data = bytearray()
        self.extents = bytearray()
        self.layer_at: dict[str, int] = {}
        # Names by inode: the first (parent, dirent), and the others of hardlinks.
        self.first_name: dict[InodeNo, tuple[InodeNo, int]] = {}
        self.links: list[tuple[int, int, int]] = []
        self.listed: dict[InodeNo, tuple[int, int, int]] = {}  # dir -> first, count, flags
        self.blocks = 0
        self.linked: set[int] = set()

    def chunks(self, built_from: Sequence[str]) -> list[bytes]:
        """The whole file, as chunks to write in order."""
        self._pack_listings()
        self.linked = {link[0] for link in self.links}
        nodes = bytearray(self.count * fmt.NODE.size)
        for ino in range(1, self.count + 1):
            self._pack_node(nodes, self.tree.inodes[InodeNo(ino)])
        links = b"".join(fmt.LINK.pack(*link) for link in sorted(self.links))
        bodies = {
            fmt.Section.BUILT_FROM: fmt.pack_strings(built_from),
            fmt.Section.LAYERS: fmt.pack_strings(list(self.layer_at)),
            fmt.Section.NODES: bytes(nodes),
            fmt.Section.DIRENTS: bytes(self.dirents),
            fmt.Section.LINKS: links,
            fmt.Section.DATA: bytes(self.data),
            fmt.Section.EXTENTS: bytes(self.extents),
            fmt.Section.XATTRS: bytes(self.xattrs),
            fmt.Section.STRINGS: bytes(self.strings),
        }
        layout: list[tuple[int, int]] = []
        body: list[bytes] = []
        at = fmt.PRELUDE
        for section in fmt.Section:
            raw = bodies[section]
            layout.append((at, len(raw)))
            padding = -len(raw) % 8
            body += (raw, bytes(padding))
            at += len(raw) + padding
        header = fmt.Header(
            fmt.VERSION, 0, at, self.count, len(self.listed), self.blocks, tuple(layout)
        )
        checksum = zlib.crc32(header.pack()[fmt.CHECKED_FROM :])
        for chunk in body:
            checksum = zlib.crc32(chunk, checksum)
        prelude = dataclasses.replace(header, checksum=checksum).pack()
        return [prelude, *body]

    def _pack_listings(self) -> None:
        """Every directory's names, in inode order: dirent order is (parent, position) order."""
        for ino in range(1, self.count + 1):
            listing = self.tree.children.get(InodeNo(ino))
            if listing is None:
                continue
            names = [name for name, _ in listing]
            flags = fmt.DIRECTORY
            if not _strictly_sorted(names):
                if not _strictly_sorted([os.fsdecode(name) for name in names]):
                    raise ValueError(f"the listing of inode {ino} is not sorted by name")
                flags |= fmt.NAMES_BY_TEXT
            first = len(self.dirents) // fmt.DIRENT.size
            for position, (name, child) in enumerate(listing):
                if child not in self.tree.inodes or child == ROOT_INO:
                    raise ValueError(f"inode {ino} lists {name!r} as inode {child}")
                dirent = first + position
                self.dirents += fmt.DIRENT.pack(self._string(name), len(name), child)
                if child in self.first_name:
                    self.links.append((child, ino, dirent))
                else:
                    self.first_name[child] = (InodeNo(ino), dirent)
            self.listed[InodeNo(ino)] = (first, len(listing), flags)
        if len(self.listed) != len(self.tree.children):
            raise ValueError("listings of inodes that are not in the tree")

    def _pack_node(self, nodes: bytearray, inode: Inode) -> None:
        ino = inode.ino
        listed = self.listed.get(ino)
        if (listed is not None) != stat.S_ISDIR(inode.mode):
            raise ValueError(f"inode {ino}: a listing if and only if a directory")
        payloads = [
            listed is not None,
            bool(inode.target),
            bool(inode.rdev),
            inode.data is not None,
        ]
        if sum(payloads) > 1:
            raise ValueError(f"inode {ino} has more than one of children, target, rdev, data")
        flags, ref, count = 0, 0, 0
        if listed is not None:
            ref, count, flags = listed
        elif inode.target:
            flags, ref, count = fmt.TARGET, self._string(inode.target), len(inode.target)
        elif inode.rdev:
            flags, ref = fmt.RDEV, inode.rdev
        elif inode.data is not None:
            flags, ref = fmt.HAS_DATA, self._data(inode.data)
            self.blocks += (inode.size + fmt.BLOCK_SIZE - 1) // fmt.BLOCK_SIZE
        if ino == ROOT_INO:
            if listed is None:
                raise ValueError("the root is no directory")
            parent, name = ROOT_INO, fmt.NO_NAME
        elif ino not in self.first_name:
            raise ValueError(f"inode {ino} has no name")
        else:
            parent, name = self.first_name[ino]
        if listed is not None and self.tree.parents.get(ino) != parent:
            raise ValueError(f"directory {ino} is listed in {parent}, not in its parent")
        if ino in self.linked:
            flags |= fmt.MORE_NAMES
        try:
            fmt.NODE.pack_into(
                nodes,
                (ino - 1) * fmt.NODE.size,
                inode.mode,
                flags,
                inode.nlink,
                inode.uid,
                inode.gid,
                inode.mtime_ns,
                inode.size,
                parent,
                name,
                ref,
                count,
                self._xattrs(inode.xattrs),
            )
        except struct.error as error:
            raise ValueError(f"inode {ino} does not fit the format: {error}") from None

    def _string(self, raw: bytes) -> int:
        """Where ``raw`` is in STRINGS: names and targets repeat, so each is stored once."""
        at = self.string_at.get(raw)
        if at is None:
            at = self.string_at[raw] = len(self.strings)
            self.strings += raw
        return at

    def _xattrs(self, pairs: tuple[tuple[bytes, bytes], ...]) -> int:
        at = self.xattrs_at.get(pairs)
        if at is None:
            at = self.xattrs_at[pairs] = len(self.xattrs)
            self.xattrs += fmt.COUNT32.pack(len(pairs))
            for key, value in pairs:
                self.xattrs += fmt.XATTR.pack(len(key), len(value)) + key + value
        return at

    def _data(self, data: DataRef) -> int:
        layer = self.layer_at.setdefault(data.digest, len(self.layer_at))
        flags, extents_at = 0, 0
        if data.extents is not None:
            flags, extents_at = fmt.SPARSE, self._extents(data.extents)
        number = len(self.data) // fmt.DATA.size
        self.data += fmt.DATA.pack(layer, flags, data.offset, data.size, extents_at)
        return number

    def _extents(self, extents: tuple[Extent, ...]) -> int:
        at = len(self.extents)
        self.extents += fmt.COUNT64.pack(len(extents))
        for extent in extents:
            self.extents += fmt.EXTENT.pack(*extent)
        return at


def _strictly_sorted(names: Sequence[bytes] | Sequence[str]) -> bool:
    return all(a < b for a, b in itertools.pairwise(names))  # type: ignore[operator]
