"""Ranges of a gzip layer's tar stream, inflated with ISA-L from the layer's checkpoints.

The checkpoints are zran's (``gzip_checkpoints.Checkpointer`` builds them
with indexed_gzip and exports them in its index format, version 1).  Each
names the compressed offset of the first whole byte of a deflate block, how
many bits (0-7) at the top of the byte before it belong to the block too,
the tar-stream offset where the block's output starts, and, except at the
start of each gzip member, the 32 KiB of output before it, which the
block's back-references may reach.  zran puts one at the start of every
member; the file ends with one at the stream's end.

A read enters the stream at the checkpoint before its offset, or goes on
from where its cursor stopped when no checkpoint lies between, and inflates
raw deflate with the checkpoint's window as the preset dictionary
(``isal_zlib``: some three times what zran gets from zlib here, and it
releases the GIL as zlib does).  A block that starts mid-byte is entered as
zlib's ``inflatePrime`` lets zran enter it, which neither zlib's nor
ISA-L's Python API offers: the decoder is first given empty deflate blocks
(``_lead_in``) whose bits end where the block starts in its byte, merged
with that byte.  The stream's bytes keep their places after that, as a
stored block and a member's trailer need (they start at a byte boundary).
At the end of a member the cursor goes on from the checkpoint at the next
member's start.

The blob was checked against its digest before it was stored and the
checkpoints were made from it, so no CRC is checked here (zran checked none
either); a damaged checkpoint file or blob is EIO, never a crash.
"""

from __future__ import annotations

import bisect
import errno
import os
import threading
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, cast

from isal import isal_zlib

from lazyfs.index.gzip_points import WINDOW, Checkpoint, Checkpoints, read_checkpoints
from providers.digest import Digest

# Compressed bytes read at a time: a random read reads up to this much past
# what it needs; an inflate call's output is bounded by ``OUTPUT_AT_MOST``
# (a run of zeros inflates a thousandfold).
INPUT_CHUNK = 64 << 10
OUTPUT_AT_MOST = 256 << 10
# Cursors per layer: each holds a decoder and up to OUTPUT_AT_MOST bytes.
HANDLES_PER_LAYER = 2
# What ISA-L and zlib raise for a stream they cannot inflate (ISA-L's stub calls it an instance).
INFLATE_ERROR = (cast(type[Exception], isal_zlib.error), zlib.error)


def _empty_blocks(end: int) -> tuple[int, int]:
    """Non-final empty deflate blocks, (bits, how many), ending ``end`` bits into a byte.

    A fixed-Huffman block with only its end code is 10 bits long; one with
    dynamic codes (two of one bit each for literal 0 and the end, two for
    distances, each code length given by a two-symbol code of its own) is 95
    bits.  10k bits reach each even ``end``; 95 + 10k each odd one.
    """
    value = count = 0

    def put(bits: int, width: int) -> None:
        nonlocal value, count
        value |= bits << count  # deflate fills each byte from its lowest bit
        count += width

    if end % 2:
        put(0b100, 3)  # not the last block; dynamic codes (BTYPE 2)
        put(0, 5)  # 257 literal/length codes
        put(1, 5)  # 2 distance codes
        put(19 - 4, 4)  # all 19 code length codes: symbol 1 is the last but one
        for symbol in (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15):
            put(1 if symbol in (1, 18) else 0, 3)
        # Code lengths, in the code-length code (symbol 1: bit 0; symbol 18: bit 1):
        put(0, 1)  # literal 0: 1
        put(1 | (138 - 11) << 1, 8)  # symbol 18: literals 1-138 none
        put(1 | (117 - 11) << 1, 8)  # symbol 18: literals 139-255 none
        put(0b000, 3)  # the end code (256) and distances 0 and 1: 1 each
        put(1, 1)  # the end code: literal 0 is bit 0, 256 bit 1
    while count % 8 != end:
        put(0b010, 3)  # not the last block; fixed codes (BTYPE 1)
        put(0, 7)  # the end code, 256: seven zero bits
    return value, count


# What goes before a block that starts ``8 - bits`` bits into the byte
# before the checkpoint's offset: whole bytes, then that byte's low bits.
_LEAD_INS = {bits: _empty_blocks(8 - bits) for bits in range(1, 8)}


def _lead_in(bits: int, byte: int) -> bytes:
    """What to inflate before the checkpoint's offset: empty blocks, ``byte``'s top ``bits``."""
    value, count = _LEAD_INS[bits]
    value |= (byte >> (8 - bits)) << count
    return value.to_bytes((count + bits) // 8, "little")


class Source(Protocol):
    """Where a cursor gets a blob's compressed bytes and its checkpoints' windows."""

    def compressed(self, at: int, size: int) -> bytes:
        """Up to ``size`` bytes of the blob at ``at``: short only where they end for now."""
        ...

    def window(self, point: Checkpoint) -> bytes:
        """The 32 KiB window of ``point`` (one with ``window_at``)."""
        ...


class _Decoder(Protocol):
    eof: bool
    unconsumed_tail: bytes

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


class Cursor:
    """A decoder somewhere in one layer's stream: ``read`` goes on from there or starts over.

    ISA-L's decoder asks for a few bytes more than the output it gives
    needs; with ``exact_input`` zlib's inflates, reading no byte past the
    last one a read's output comes from (a span not yet fetched stays so).
    Raises ValueError (or an ``INFLATE_ERROR``) for a stream that does not
    inflate as its checkpoints say, and what its ``Source`` raises.
    """

    def __init__(self, table: Checkpoints, *, exact_input: bool = False) -> None:
        self._table = table
        self._inflater = zlib if exact_input else isal_zlib
        self._decoder: _Decoder | None = None
        self._start = table.points[0]
        self._lead = 0  # bits of the byte before ``_next_in`` to enter at, or 0
        self._next_in = 0  # the next compressed byte to read
        self._position = 0  # the tar offset of ``_pending``'s first byte
        self._pending = memoryview(b"")

    def reaches(self, offset: int) -> bool:
        """Whether a read at ``offset`` goes on from here, with no checkpoint nearer."""
        at = self._table.points[self._table.before(offset)].position
        return self._decoder is not None and at <= self._position <= offset

    def read(self, source: Source, offset: int, length: int) -> bytes:
        if offset < self._table.positions[0]:
            raise ValueError(f"{offset} lies before the first checkpoint")
        end = min(offset + length, self._table.tar_size)
        if offset >= end:
            return b""
        if not self.reaches(offset):
            self._enter(self._table.before(offset), source)
        parts = []
        while self._position < end:
            if not self._pending:
                self._pending = memoryview(self._inflate(source))
                if not self._pending:
                    raise ValueError(f"the stream ends at {self._position}, not at {end}")
            skip = max(offset - self._position, 0)
            take = min(len(self._pending), end - self._position)
            if skip < take:
                parts.append(self._pending[skip:take])
            self._pending = self._pending[take:]
            self._position += take
        return b"".join(parts)

    def _enter(self, index: int, source: Source) -> None:
        point = self._start = self._table.points[index]
        if not 0 <= point.bits <= 7:
            raise ValueError(f"a checkpoint {point.bits} bits into its byte")
        if point.window_at is None:
            self._decoder = self._inflater.decompressobj(wbits=-15)
        else:
            window = source.window(point)
            if len(window) != WINDOW:
                raise ValueError("a checkpoint's window is not 32 KiB long")
            self._decoder = self._inflater.decompressobj(wbits=-15, zdict=window)
        self._lead = point.bits
        self._next_in = point.compressed - 1 if point.bits else point.compressed
        self._position = point.position
        self._pending = memoryview(b"")

    def _inflate(self, source: Source) -> bytes:
        """The next output of the stream; b"" at its end."""
        decoder = self._decoder
        assert decoder is not None  # entered before any read
        while True:
            if decoder.eof:
                if self._position >= self._table.tar_size:
                    return b""
                self._next_member(source)
                decoder = self._decoder
                assert decoder is not None
            data = decoder.unconsumed_tail
            if not data:
                # Output held back at the last call's cap (mid-match, its input all
                # taken) comes first: more input now could be the next span's.
                if out := decoder.decompress(b"", OUTPUT_AT_MOST):
                    return out
                data = self._compressed(source)
                if not data:
                    raise ValueError(f"the blob ends inside the deflate stream at {self._next_in}")
            if out := decoder.decompress(data, OUTPUT_AT_MOST):
                return out

    def _next_member(self, source: Source) -> None:
        # zran's checkpoint at the next member's start: past the trailer and header.
        first = bisect.bisect_left(self._table.positions, self._position)
        for index in range(first, len(self._table.points)):
            point = self._table.points[index]
            if point.position > self._position:
                break
            if point.window_at is None and point.compressed > self._start.compressed:
                self._enter(index, source)
                return
        raise ValueError(f"no checkpoint at the gzip member that starts at {self._position}")

    def _compressed(self, source: Source) -> bytes:
        data = source.compressed(self._next_in, INPUT_CHUNK)
        self._next_in += len(data)
        if self._lead and data:
            data = _lead_in(self._lead, data[0]) + data[1:]
            self._lead = 0
        return data


class _Files:
    """A stored blob, open, and its checkpoint file, opened for each window read."""

    def __init__(self, blob: int, checkpoints: Path) -> None:
        self._blob = blob
        self._checkpoints = checkpoints

    def compressed(self, at: int, size: int) -> bytes:
        return os.pread(self._blob, size, at)

    def window(self, point: Checkpoint) -> bytes:
        assert point.window_at is not None
        with open(self._checkpoints, "rb", buffering=0) as file:
            return os.pread(file.fileno(), WINDOW, point.window_at)


class GzipCheckpoints:
    """``read_range`` over gzip blobs, each with its checkpoint file.

    ``layers`` maps a digest to (blob, checkpoint file).  Thread-safe: a
    cursor serves one read at a time, lent from a small pool per layer that
    grows only while every cursor of the layer is busy, up to
    ``handles_per_layer`` (inflating releases the GIL, so reads of one big
    layer run in parallel).  A read takes the idle cursor it can go on from
    when there is one, so files read front to back, or one after another
    in the stream's order, are inflated once.  Each layer's checkpoint table
    is read on its first read and kept; the windows stay in the file, read
    as a cursor enters at them.  The blob is opened per read, so open
    descriptors are bounded by the reads in flight.
    """

    def __init__(
        self,
        layers: Mapping[Digest, tuple[Path, Path]],
        *,
        handles_per_layer: int = HANDLES_PER_LAYER,
    ) -> None:
        self._pools = {
            digest: _Pool(blob, checkpoints, handles_per_layer)
            for digest, (blob, checkpoints) in layers.items()
        }

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        pool = self._pools[digest]  # KeyError for an unknown layer, as promised
        if length <= 0:
            return b""
        try:
            with pool.cursor(offset) as cursor, open(pool.blob, "rb", buffering=0) as blob:
                return cursor.read(_Files(blob.fileno(), pool.checkpoints), offset, length)
        except (OSError, ValueError, *INFLATE_ERROR) as error:
            raise OSError(
                errno.EIO, f"layer {digest}: cannot read {length} bytes at {offset}: {error}"
            ) from error

    def close(self) -> None:
        """Let go of the idle cursors; reads may still make new ones."""
        for pool in self._pools.values():
            pool.close()


class _Pool:
    """Up to ``size`` cursors over one blob, each lent to one thread at a time."""

    def __init__(self, blob: Path, checkpoints: Path, size: int) -> None:
        self.blob = blob
        self.checkpoints = checkpoints
        self._size = size
        self._table: Checkpoints | None = None
        self._idle: list[Cursor] = []
        self._made = 0
        self._changed = threading.Condition()

    @contextmanager
    def cursor(self, offset: int) -> Iterator[Cursor]:
        table = self._loaded()
        with self._changed:
            while not self._idle and self._made >= self._size:
                self._changed.wait()
            if self._idle:
                going_on = [c for c in self._idle if c.reaches(offset)]
                cursor = going_on[0] if going_on else self._idle[0]
                self._idle.remove(cursor)
            else:
                cursor = Cursor(table)
                self._made += 1
        try:
            yield cursor
        except BaseException:
            # A cursor that failed may be in any state: drop it, a new one is cheap.
            with self._changed:
                self._made -= 1
                self._changed.notify()
            raise
        with self._changed:
            self._idle.append(cursor)
            self._changed.notify()

    def _loaded(self) -> Checkpoints:
        table = self._table
        if table is None:
            # Two threads may both read it the first time; either table will do.
            table = read_checkpoints(self.checkpoints)
            # Offsets are checked against the blob size the table says: the blob's.
            if (size := self.blob.stat().st_size) != table.blob_size:
                raise ValueError(f"the checkpoints are of a {table.blob_size}-byte blob: {size}")
            self._table = table
        return table

    def close(self) -> None:
        with self._changed:
            self._made -= len(self._idle)
            self._idle = []
            self._changed.notify_all()
