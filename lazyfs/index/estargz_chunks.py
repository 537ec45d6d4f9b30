"""The chunk table of an eStargz layer: which bytes of its blob hold which bytes of its files.

An eStargz layer is indexed from its TOC alone (``lazyfs.index.estargz_index``),
without its tar stream, and the TOC does not say where a file's bytes start
in that stream (the tar headers before them are not in it).  So an eStargz
index names a file's bytes in the layer's *data space* instead: the layer's
regular files in archive order, each non-empty one starting at the next
multiple of ``ALIGN`` after the one before it ends, a file of ``n`` bytes at
``o`` owning ``[o, o + n)``.  ``IndexEntry.offset`` (hence ``DataRef.offset``
in the merged tree) is that ``o``, ``LayerIndex.tar_size`` the end of the
last file.  The readers of the merged tree pass these offsets to a
``TarRangeReader`` as they pass tar offsets for the other formats, and
``lazyfs.blobs.estargz_reader`` serves them: the tree and the FUSE
operations need not know.

Why the alignment: the chunk cache above reads the space in aligned blocks
(``lazyfs.blobs.ranges.ChunkCache``, 128 KiB), and ``ALIGN`` is a multiple
of any such block, so no block holds bytes of two files.  A read of one file
then never fetches a neighbour's chunk from the registry, nor fails because
a neighbour's chunk does not verify.  The gaps hold no bytes of any file and
read as zeros.

The table tiles the data space with the TOC's chunks, in order, each a
``ChunkRow``: ``size`` bytes of the space from ``start`` are the bytes
``[inner_offset, inner_offset + size)`` of the gzip member at ``offset`` in
the blob, which ends by ``end``, and their digest is ``digest``.  It is kept
beside the index (``CHUNKS_NAME``) as text: a JSON header line (the layer,
the TOC digest it was built from, the blob's size, the prefetch span, the
row count), then a JSON line of rows.

Pure: no I/O; safe from any thread.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload

from lazyfs.index.estargz_toc import Chunk
from providers.digest import Digest, is_digest

VERSION = 1
ALIGN = 1 << 20


def aligned(offset: int) -> int:
    """The first multiple of ``ALIGN`` at or after ``offset``."""
    return -(-offset // ALIGN) * ALIGN


class ChunkRow(NamedTuple):
    """``size`` bytes of the data space from ``start``: a chunk of the file ``name``.

    They are the file's bytes from ``chunk_offset``, and the bytes
    ``[inner_offset, inner_offset + size)`` of the gzip member at ``offset``
    in the blob, which ends by ``end``; ``digest`` is their digest.
    """

    start: int
    size: int
    offset: int
    end: int
    inner_offset: int
    chunk_offset: int
    digest: Digest
    name: str

    def chunk(self) -> Chunk:
        """The chunk as ``lazyfs.index.estargz.inflate_chunk`` takes it."""
        return Chunk(
            self.offset, self.chunk_offset, self.size, self.digest, self.inner_offset, self.end
        )


@dataclass(frozen=True)
class ChunkTable:
    """The rows of layer ``digest``, in data-space order, none overlapping.

    ``toc_digest`` is the digest of the TOC they were read from (the layer
    descriptor's annotation), ``blob_size`` the blob's size, ``prefetch``
    the range of the blob to fetch at mount (``estargz.prefetch_span``) or
    None.
    """

    digest: Digest
    toc_digest: Digest
    blob_size: int
    rows: Sequence[ChunkRow]
    prefetch: tuple[int, int] | None = None
    _starts: list[int] = field(init=False, repr=False, compare=False)
    _size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows = self.rows
        starts = rows.starts() if isinstance(rows, _Stored) else [row.start for row in rows]
        object.__setattr__(self, "_starts", starts)
        # Asked at every read: worked out once.
        object.__setattr__(self, "_size", rows[-1].start + rows[-1].size if rows else 0)

    @property
    def size(self) -> int:
        """The length of the data space: the end of its last row."""
        return self._size

    def covering(self, offset: int, end: int) -> range:
        """The indexes of the rows that may hold bytes of ``[offset, end)``, in order.

        Every row that starts before ``end``, from the last one that starts
        at or before ``offset`` (which may end before it, in a gap).
        """
        if offset >= end:
            return range(0)
        first = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        last = bisect.bisect_left(self._starts, end)
        return range(first, last)


def dumps(table: ChunkTable) -> str:
    """The table as text; ``loads`` gives it back equal."""
    header = {
        "version": VERSION,
        "digest": table.digest,
        "toc_digest": table.toc_digest,
        "blob_size": table.blob_size,
        "prefetch": None if table.prefetch is None else list(table.prefetch),
        "rows": len(table.rows),
    }
    # A row is a tuple of its fields in this order, which json writes as a list.
    rows = table.rows._raw if isinstance(table.rows, _Stored) else list(table.rows)
    return f"{json.dumps(header)}\n{json.dumps(rows, separators=(',', ':'))}\n"


def source_of(head: str) -> tuple[Digest, int]:
    """The TOC digest and blob size a table was built from, read from its first line.

    ``dumps``'s header; ValueError if it is not one.
    """
    try:
        header = _header(head)
        return Digest(str(header["toc_digest"])), header["blob_size"]
    except (KeyError, AttributeError, TypeError) as error:
        raise ValueError(f"malformed chunk table: {error!r}") from error


def _header(head: str) -> dict[str, Any]:
    """``dumps``'s header line, of this version, its counts integers (TypeError if not)."""
    header = json.loads(head)
    if not isinstance(header, dict):
        raise TypeError(f"the header is a {type(header).__name__}")
    if header.get("version") != VERSION:
        raise ValueError(f"chunk table format {header.get('version')!r}, want {VERSION}")
    prefetch = header["prefetch"]
    # json reads Infinity and 1e999 too, which no int() takes: integers only.
    for value in (header["blob_size"], header["rows"], *(prefetch or ())):
        if type(value) is not int:
            raise TypeError(f"the header has {value!r} where an integer belongs")
    if prefetch is not None and len(prefetch) != 2:
        raise TypeError(f"the header's prefetch span is {prefetch!r}")
    return header


class _Stored(Sequence[ChunkRow]):
    """The rows of a table read by ``loads``, each made a ``ChunkRow`` only when asked for.

    A start reads a few hundred of a layer's thousands of chunks: making
    them all first cost more than parsing the text.
    """

    def __init__(self, raw: list[list[Any]]) -> None:
        self._raw = raw

    def starts(self) -> list[int]:
        return [row[0] for row in self._raw]

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[ChunkRow]:
        return map(_row, self._raw)

    @overload
    def __getitem__(self, index: int) -> ChunkRow: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[ChunkRow, ...]: ...

    def __getitem__(self, index: int | slice) -> ChunkRow | tuple[ChunkRow, ...]:
        if isinstance(index, slice):
            return tuple(_row(raw) for raw in self._raw[index])
        return _row(self._raw[index])

    # Equal, hashed and shown as the tuple of its rows, which a built table holds.
    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Stored):
            return self._raw == other._raw
        if isinstance(other, tuple):
            return tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


def _row(raw: list[Any]) -> ChunkRow:
    # ``_check`` made sure of the eight fields' types.
    return ChunkRow._make(raw)


def loads(text: str) -> ChunkTable:
    """Parse ``dumps`` output; ValueError unless it is a whole table of this version.

    The rows must follow each other without overlapping and lie inside the
    blob: a damaged table is refused rather than read at the wrong place.
    """
    head, _, rest = text.partition("\n")
    try:
        header = _header(head)
        raw = json.loads(rest)
        if not isinstance(raw, list):
            raise TypeError(f"rows are a {type(raw).__name__}")
        if len(raw) != header["rows"]:
            raise ValueError(f"chunk table has {len(raw)} rows, its header {header['rows']}")
        _check(raw, header["blob_size"])
        prefetch = header["prefetch"]
        return ChunkTable(
            Digest(str(header["digest"])),
            Digest(str(header["toc_digest"])),
            header["blob_size"],
            _Stored(raw),
            None if prefetch is None else (prefetch[0], prefetch[1]),
        )
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise ValueError(f"malformed chunk table: {error!r}") from error


def _check(raw: list[Any], blob_size: int) -> None:
    """Refuse rows that overlap, go back, are empty or reach outside the blob.

    TypeError for a row that is not eight fields: six integers, a digest
    (checked against it before a byte is served, so of a form that can be)
    and a name.
    """
    at = 0
    for row in raw:
        if type(row) is not list or len(row) != 8:
            raise TypeError(f"chunk table row {row!r} is not eight fields")
        start, size, offset, end, inner, chunk_offset, digest, name = row
        for value in (start, size, offset, end, inner, chunk_offset):
            if type(value) is not int:
                raise TypeError(f"chunk table row {row!r} has a place that is not an integer")
        if type(name) is not str or type(digest) is not str or not is_digest(digest):
            raise TypeError(f"chunk table row {row!r} has a bad digest or name")
        if start < at or size <= 0 or not 0 <= offset < end <= blob_size:
            raise ValueError(f"chunk table row {row!r} is not after {at} and inside the blob")
        at = start + size
