"""A file's data extents and holes: how a GNU sparse file's bytes are read, without tarfile.

A sparse file (``providers.tar_sparse``) is its data extents, stored back
to back in the tar stream, and holes that read as zeros.  This is the read
side, and ``checked_extents``, which judges a sparse map: kept apart from
the tar parsing so that a FUSE mount process, which reads files through
their index, and the checks of a published index
(``lazyfs.index.artifact_entries``) never import tarfile.  Pure: no I/O.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from typing import NamedTuple

from providers.errors import bad_entry

# (offset in the file, length, offset in the entry's stored data): one data extent.
Extent = tuple[int, int, int]
# GNU tar writes one extent per run of data; a map this long is no real file's.
MAX_EXTENTS = 1 << 16


class FileLayout(NamedTuple):
    """Where a regular entry's bytes are in the uncompressed tar stream.

    ``size`` is the file's apparent size, holes included.  ``offset`` is where
    its stored data starts.  ``extents`` is None for an ordinary entry (``size``
    bytes stored from ``offset``); for a sparse one, its data extents in file
    order, without overlaps or empty ones, possibly none at all (a file that
    is one hole); every other byte is a hole.
    """

    size: int
    offset: int
    extents: tuple[Extent, ...] | None = None

    @property
    def stored(self) -> int:
        """How many bytes of data the entry stores in the tar stream."""
        if self.extents is None:
            return self.size
        return sum(length for _, length, _ in self.extents)


def checked_extents(
    pairs: list[tuple[int, int]], size: int, *, layer: str, entry: str
) -> tuple[Extent, ...]:
    """The data extents of a sparse map of a file of ``size`` bytes, with their stored offsets.

    Empty extents are dropped; BadImage naming the entry for extents that
    overlap, run backwards or pass ``size``, or for more than ``MAX_EXTENTS``.
    """
    if len(pairs) > MAX_EXTENTS:
        raise bad_entry(layer, entry, f"has a sparse map of {len(pairs)} extents")
    extents: list[Extent] = []
    stored = end = 0
    for offset, length in pairs:
        if offset < 0 or length < 0 or offset + length > size:
            raise bad_entry(layer, entry, f"has a sparse extent {offset}+{length} past its {size}")
        if length == 0:
            continue  # GNU tar ends a map with (size, 0); old GNU pads with (0, 0)
        if offset < end:
            raise bad_entry(layer, entry, "has sparse extents that overlap or run backwards")
        extents.append((offset, length, stored))
        stored += length
        end = offset + length
    return tuple(extents)


def data_extents(extents: tuple[Extent, ...] | None, size: int) -> tuple[Extent, ...]:
    """The data extents of a file: ``extents``, or all of it for an ordinary one."""
    if extents is not None:
        return extents
    return ((0, size, 0),) if size else ()


def pieces(
    extents: tuple[Extent, ...] | None, size: int, offset: int, length: int
) -> Iterator[tuple[int, int | None]]:
    """``length`` bytes at ``offset`` of a file, as (length, stored offset or None for zeros).

    In file order, covering the range cut at ``size``; nothing past it.
    """
    end = min(size, offset + length)
    if offset >= end:
        return
    if extents is None:
        yield end - offset, offset
        return
    # The first extent that ends after offset: the one holding it, or the next.
    here = max(bisect.bisect_right(extents, offset, key=lambda e: e[0]) - 1, 0)
    position = offset
    for start, count, stored in extents[here:]:
        if position >= end:
            return
        if start + count <= position:
            continue
        if position < start:
            gap = min(start, end) - position
            yield gap, None
            position += gap
            if position >= end:
                return
        take = min(start + count, end) - position
        yield take, stored + position - start
        position += take
    if position < end:
        yield end - position, None


def seek(extents: tuple[Extent, ...] | None, size: int, offset: int, whence: int) -> int | None:
    """Where ``lseek(offset, whence)`` lands in a file, for ``os.SEEK_DATA`` or ``os.SEEK_HOLE``.

    SEEK_DATA: the start of the first data at or after ``offset``; SEEK_HOLE:
    the first byte of a hole at or after it, the end of the file counting as
    one (so ``size`` for a file without holes after ``offset``).  None where
    lseek(2) fails with ENXIO: ``offset`` negative or at or past ``size``,
    or no data after it.  ValueError for any other ``whence``.
    """
    if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
        raise ValueError(f"whence {whence} is neither SEEK_DATA nor SEEK_HOLE")
    if offset < 0 or offset >= size:
        return None
    found = data_extents(extents, size)
    # The first extent that ends after offset: the one holding it, or the next.
    here = max(bisect.bisect_right(found, offset, key=lambda e: e[0]) - 1, 0)
    position = offset
    for start, count, _ in found[here:]:
        if start + count <= position:
            continue
        if whence == os.SEEK_DATA:
            return max(start, position)
        if start > position:
            return position  # in the hole before this extent
        position = start + count  # data up to here; the next extent may follow at once
    return None if whence == os.SEEK_DATA else position
