"""GNU sparse files in a layer's tar: their maps parsed with bounds and checked, their bytes found.

A GNU sparse entry stores only its data extents, back to back; the rest of
the file, its holes, reads as zeros.  GNU tar writes the extent map in four
forms:

- old GNU: a type ``S`` header with up to 4 (offset, length) slots, more in
  512-byte extension blocks while ``isextended`` is set, the apparent size
  in the header;
- PAX 0.0: ``GNU.sparse.offset`` and ``GNU.sparse.numbytes`` records,
  repeated in turn, and ``GNU.sparse.size``;
- PAX 0.1: ``GNU.sparse.map`` = ``offset,length,offset,length...`` and
  ``GNU.sparse.size``;
- PAX 1.0: ``GNU.sparse.major=1``, ``minor=0`` and ``GNU.sparse.realsize``,
  the map at the start of the entry's data as decimal lines (the count,
  then offset and length in turn), padded to a block.

tarfile parses all four but trusts them: it reads unbounded maps, raises
ValueError or IndexError on garbage, and a map whose extents add up to more
than the entry stores makes its readers read the next entry's bytes as this
file's.  So ``providers.tar_stream.CheckedTarInfo`` parses the maps with
the bounded parsers here (damage is ``tarfile.ReadError``), and
``tar_stream.file_layout`` judges every regular entry, sparse or not, with
``providers.extents.checked_extents`` (there, without tarfile, for the
checks of a published index too), before anyone reads its bytes: applying
(``backends.apply``, with ``stored_chunks``), indexing
(``lazyfs.index.build``) and, through the index, the FUSE reads
(``providers.extents``).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from providers.extents import MAX_EXTENTS as MAX_EXTENTS  # re-exported
from providers.extents import FileLayout as FileLayout  # re-exported: the tar readers' type
from providers.extents import checked_extents as checked_extents  # re-exported
from providers.extents import data_extents

BLOCK = tarfile.BLOCKSIZE
# Decimal digits of a number below 2**64.
_MAX_DIGITS = 20
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
# tarfile's reader of numeric header fields (octal or base-256); not in typeshed.
_nti: Callable[[bytes], int] = tarfile.nti  # type: ignore[attr-defined]


def stored_chunks(stream: BinaryIO, layout: FileLayout, chunk: int) -> Iterator[tuple[int, bytes]]:
    """The entry's stored data read from ``stream``: (offset in the file, bytes), in order.

    ``stream`` is at or before ``layout.offset`` and seeks forward.  Holes
    yield nothing.  A short read is ``tarfile.ReadError``.
    """
    stream.seek(layout.offset)
    for start, count, _ in data_extents(layout.extents, layout.size):
        done = 0
        while done < count:
            data = stream.read(min(chunk, count - done))
            if not data:
                raise tarfile.ReadError("unexpected end of data")
            yield start + done, data
            done += len(data)


# -- parsing the maps (called by CheckedTarInfo, inside tarfile's header processing) --


def number(text: bytes | str, what: str) -> int:
    """A decimal number of a sparse map; ReadError for anything else."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    if not raw.isdigit() or len(raw) > _MAX_DIGITS:
        raise tarfile.ReadError(f"{what} is {raw[:40]!r}, not a number")
    return int(raw)


def pairs(numbers: list[int], what: str) -> list[tuple[int, int]]:
    if len(numbers) % 2 or len(numbers) > 2 * MAX_EXTENTS:
        raise tarfile.ReadError(f"{what} has {len(numbers)} numbers")
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def map_00(buf: bytes) -> list[tuple[int, int]]:
    """PAX 0.0: the offset and numbytes records of the extended header ``buf``, in turn."""
    numbers: list[int] = []
    position = 0
    while (match := _PAX_RECORD.match(buf, position)) is not None:
        length = int(match.group(1))
        if length <= 0:
            break  # tarfile has refused the header already
        key = match.group(2)
        value = buf[match.end(2) + 1 : match.start(1) + length - 1]
        want = b"GNU.sparse.numbytes" if len(numbers) % 2 else b"GNU.sparse.offset"
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            if key != want:
                raise tarfile.ReadError("the PAX 0.0 sparse map is out of order")
            numbers.append(number(value, "a PAX 0.0 sparse map entry"))
            if len(numbers) > 2 * MAX_EXTENTS:
                break  # pairs() refuses it
        position += length
    return pairs(numbers, "the PAX 0.0 sparse map")


def map_01(text: str) -> list[tuple[int, int]]:
    """PAX 0.1: ``GNU.sparse.map``."""
    fields = text.split(",") if text else []
    if len(fields) > 2 * MAX_EXTENTS:
        raise tarfile.ReadError(f"the PAX 0.1 sparse map has {len(fields)} numbers")
    return pairs([number(f, "a PAX 0.1 sparse map entry") for f in fields], "the PAX 0.1 map")


def map_10(stream: BinaryIO, room: int) -> tuple[list[tuple[int, int]], int]:
    """PAX 1.0: the map at the start of the entry's data; the pairs and the bytes it took.

    ``room`` is how many bytes the entry's data has: the map never reads past them.
    """
    numbers: list[int] = []
    count: int | None = None
    buf, used = b"", 0
    while count is None or len(numbers) < 2 * count:
        line, newline, rest = buf.partition(b"\n")
        if not newline:
            if len(buf) > _MAX_DIGITS or used + BLOCK > room:
                raise tarfile.ReadError("the PAX 1.0 sparse map runs past its entry")
            block = stream.read(BLOCK)
            if len(block) != BLOCK:
                raise tarfile.ReadError("the PAX 1.0 sparse map is truncated")
            buf += block
            used += BLOCK
            continue
        buf = rest
        value = number(line, "a PAX 1.0 sparse map line")
        if count is None:
            if value > MAX_EXTENTS:
                raise tarfile.ReadError(f"the PAX 1.0 sparse map claims {value} extents")
            count = value
        else:
            numbers.append(value)
    return pairs(numbers, "the PAX 1.0 map"), used


def old_gnu_extension(block: bytes) -> tuple[list[tuple[int, int]], bool]:
    """An old GNU extension block: its slots up to the first empty one, and isextended."""
    if len(block) != BLOCK:
        raise tarfile.ReadError("an old GNU sparse header is truncated")
    found = []
    for slot in range(21):
        field = block[slot * 24 : slot * 24 + 24]
        if field[0] == 0:
            break
        try:
            found.append((_nti(field[:12]), _nti(field[12:])))
        except (ValueError, tarfile.TarError) as error:  # tarfile raises InvalidHeaderError
            raise tarfile.ReadError(f"an old GNU sparse header is damaged: {error}") from None
    return found, bool(block[504])
