"""The packed tree: a merged tree as one read-only file, memory-mapped and used in place.

``lazyfs.tree.packed_write.write_packed`` writes a ``MergedTree`` in this
format; ``lazyfs.tree.packed_read.PackedTree`` maps it and answers the
questions the FUSE operations ask of a ``MergedTree`` by reading the mapped
bytes, so a mount starts without parsing anything and every mount of one
image shares the same page-cache pages.  This module is the format: its
layout, its limits and the refusals, shared by both sides.

Layout (little-endian; every section starts on an 8-byte boundary)::

    header     magic "LZFSTREE", version u32, checksum u32, file size u64,
               inode count u32, directory count u32, data blocks u64
    sections   (offset u64, length u64) for each of, in this order:
    BUILT_FROM what the tree was built from: a string list (below)
    LAYERS     the layer digests data records name: a string list
    NODES      one 56-byte record per inode; inode n is record n - 1
    DIRENTS    16 bytes per name: string offset u64, length u32, inode u32;
               a directory's names are consecutive, in its listing order
    LINKS      12 bytes per extra name of a hardlinked inode: inode u32,
               parent u32, dirent u32; sorted by (inode, dirent)
    DATA       32 bytes per file's data: layer u32, flags u32 (bit 0: sparse),
               tar offset u64, size u64, extents offset u64
    EXTENTS    per sparse file: count u64, then (start, length, stored) u64 each
    XATTRS     per distinct xattr list: count u32, then per pair key length
               u32, value length u32, key, value; offset 0 is the empty list
    STRINGS    names and symlink targets, back to back (names deduplicated)

A node record: mode u16 (a full st_mode), flags u16, nlink u32, uid u32,
gid u32, mtime_ns i64, size u64, parent u32, name u32 (the dirent of its
first name), ref u64, count u32, xattrs u32 (offset in XATTRS).  ``ref`` and
``count`` hold the inode's one payload, which its flags name: a directory's
first dirent and number of children, a symlink's target (string offset and
length), a device's rdev, or a file's data record.  ``parent`` is a
directory's parent (the root's is itself) or, for any other inode, the
directory of its first name; the names of a hardlinked inode after its
first are in LINKS.  A directory's names are sorted by bytes, or when its
names are not all UTF-8 and the two orders differ, by ``os.fsdecode``
(flag ``NAMES_BY_TEXT``): the order ``lazyfs.tree.merge`` lists them in.

A string list is: count u32, then per string its UTF-8 length u32 and bytes.

Checked at open, in this order: the magic, the version, the file size, one
CRC-32 over everything after the checksum field, the section table, then
``built_from``.  CRC-32 because reading it is cheap (zlib does several GB
per second; a 1M-entry file is about 100 MB, read through a small buffer,
so checking costs no mapped pages) and it catches what it is for: a torn or
truncated write, a flipped bit, a file cut short.  One checksum rather than
one per section: a per-section sum would have to be checked at open all
the same, or damage would surface later as a wrong answer inside a FUSE
handler.  It is no defence against a forger; the file lives in the
root-owned store, trusted as the layer indexes are.

The file is never changed in place (a file cut short under a mapping is
SIGBUS for its readers): ``write_packed`` replaces it by a rename, and a
reader that opened the old one keeps reading the old one.

A file that fails a check is refused with ``DamagedPackedTree`` (not
something this code wrote, or damaged since) or ``StalePackedTree`` (whole,
but from another format version or built from something else); the caller
builds the tree again.  Pure: no I/O.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"LZFSTREE"
VERSION = 1

HEADER = struct.Struct("<8sIIQIIQ")
CHECKED_FROM = 16  # the checksum covers the file from the end of its own field on
SECTION = struct.Struct("<QQ")
NODE = struct.Struct("<HHIIIqQIIQII")
# A node's flags, ref and count alone: what a lookup reads of the directory.
NODE_PAYLOAD = struct.Struct("<2xH36xQI")
DIRENT = struct.Struct("<QII")
LINK = struct.Struct("<III")
DATA = struct.Struct("<IIQQQ")
COUNT32 = struct.Struct("<I")
COUNT64 = struct.Struct("<Q")
EXTENT = struct.Struct("<QQQ")
XATTR = struct.Struct("<II")

# Node flags: which payload ``ref`` and ``count`` hold, and facts about names.
DIRECTORY = 1 << 0
TARGET = 1 << 1
RDEV = 1 << 2
HAS_DATA = 1 << 3
NAMES_BY_TEXT = 1 << 4  # a directory listed by os.fsdecode order, not bytes
MORE_NAMES = 1 << 5  # an inode with names in LINKS

SPARSE = 1 << 0  # a data record's flag: extents are stored (maybe none)

NO_NAME = 0xFFFF_FFFF  # the root's name
BLOCK_SIZE = 4096  # the unit of the header's data block count, as statfs reports


class Section(enum.IntEnum):
    BUILT_FROM = 0
    LAYERS = 1
    NODES = 2
    DIRENTS = 3
    LINKS = 4
    DATA = 5
    EXTENTS = 6
    XATTRS = 7
    STRINGS = 8


PRELUDE = HEADER.size + SECTION.size * len(Section)

# Sections made of fixed records: their length is a whole number of them.
RECORD_SIZES = {
    Section.NODES: NODE.size,
    Section.DIRENTS: DIRENT.size,
    Section.LINKS: LINK.size,
    Section.DATA: DATA.size,
}


class PackedTreeRefused(Exception):
    """A packed tree file that must not be used; build the tree again.

    ``path`` is the file, ``reason`` what is wrong with it.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"packed tree {path}: {reason}")
        self.path = path
        self.reason = reason


class DamagedPackedTree(PackedTreeRefused):
    """Not a packed tree, truncated, or its bytes fail the checksum or the layout."""


class StalePackedTree(PackedTreeRefused):
    """A whole packed tree from another format version or built from something else."""


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed header and the section table: (offset, length) by ``Section``."""

    version: int
    checksum: int
    file_size: int
    inode_count: int
    dir_count: int
    data_blocks: int
    sections: tuple[tuple[int, int], ...]

    def pack(self) -> bytes:
        fields = (
            MAGIC,
            self.version,
            self.checksum,
            self.file_size,
            self.inode_count,
            self.dir_count,
            self.data_blocks,
        )
        return HEADER.pack(*fields) + b"".join(SECTION.pack(*s) for s in self.sections)


def parse_header(prelude: bytes, file_size: int, path: Path) -> Header:
    """The header of a file of ``file_size`` bytes starting with ``prelude``.

    Checks the magic, the version and the recorded size; not the checksum,
    nor the section table (``check_sections``, once the checksum holds).
    """
    if len(prelude) < PRELUDE or file_size < PRELUDE:
        raise DamagedPackedTree(path, f"truncated: {file_size} bytes, shorter than its header")
    magic, version, checksum, size, inodes, dirs, blocks = HEADER.unpack_from(prelude)
    if magic != MAGIC:
        raise DamagedPackedTree(path, f"not a packed tree (magic {magic!r})")
    if version != VERSION:
        raise StalePackedTree(path, f"format version {version}, this code reads {VERSION}")
    if size != file_size:
        raise DamagedPackedTree(path, f"{file_size} bytes where its header says {size}")
    sections = tuple(
        SECTION.unpack_from(prelude, HEADER.size + SECTION.size * number) for number in Section
    )
    return Header(version, checksum, size, inodes, dirs, blocks, sections)


def check_sections(header: Header, path: Path) -> None:
    """Refuse a section table that does not describe the file; the checksum held already.

    Cheap insurance, so that no later read wanders off a section.
    """
    for section, (offset, length) in zip(Section, header.sections, strict=True):
        if offset % 8 or offset < PRELUDE or offset + length > header.file_size:
            raise DamagedPackedTree(path, f"section {section.name} lies outside the file")
        size = RECORD_SIZES.get(section)
        if size is not None and length % size:
            raise DamagedPackedTree(path, f"section {section.name} is not whole records")
    if (
        header.sections[Section.NODES][1] != header.inode_count * NODE.size
        or not header.inode_count
    ):
        raise DamagedPackedTree(path, f"{header.inode_count} inodes, not what NODES holds")


def pack_strings(strings: Sequence[str]) -> bytes:
    """A string list: count, then each string's UTF-8 length and bytes."""
    parts = [COUNT32.pack(len(strings))]
    for text in strings:
        raw = text.encode()
        parts += (COUNT32.pack(len(raw)), raw)
    return b"".join(parts)


def unpack_strings(buffer: bytes, path: Path) -> tuple[str, ...]:
    """The strings of a string list; DamagedPackedTree if it is not one."""
    try:
        (count,) = COUNT32.unpack_from(buffer)
        found, at = [], COUNT32.size
        for _ in range(count):
            (length,) = COUNT32.unpack_from(buffer, at)
            at += COUNT32.size
            if at + length > len(buffer):
                raise ValueError("a string runs past its section")
            found.append(buffer[at : at + length].decode())
            at += length
    except (struct.error, ValueError) as error:
        raise DamagedPackedTree(path, f"a bad string list: {error}") from None
    return tuple(found)
