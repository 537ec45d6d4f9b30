"""Inflating a gzip stream from one of its checkpoints, with the checkpoint's window only.

A deflate stream can be entered at a block boundary given the 32 KiB of
output before it (the *window*: what back-references there may reach) and
the bit the block starts at.  zran (``indexed_gzip``) does this from an
index that holds every window; a published index (format 2) holds each
window apart, fetched only when a read starts there, so this inflates with
Python's zlib from one checkpoint and its window alone.

zlib cannot be told to start mid-byte (no ``inflatePrime``): a checkpoint
``bits`` back from its byte offset is entered by shifting the compressed
bytes so that its first bit becomes the first bit of a byte
(``Shifted``).  Deflate reads bits from the low end of each byte, so the
stream from that bit on is the little-endian number of the bytes, shifted
right.

Pure: ``inflate_from`` is given a function that reads compressed bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from lazyfs.index.artifact import WINDOW, Point, first_byte


class Shifted:
    """Compressed bytes from a byte's high ``bits`` bits on, re-cut into whole bytes.

    ``feed`` takes the bytes in order, the first being the byte the stream
    starts in; it holds one byte back, whose low bits the next piece gives.
    With ``bits`` 0 the bytes pass unchanged.
    """

    def __init__(self, bits: int) -> None:
        self.shift = 8 - bits if bits else 0
        self._carry = b""

    def feed(self, piece: bytes) -> bytes:
        if not self.shift:
            return piece
        data = self._carry + piece
        if len(data) < 2:
            self._carry = data
            return b""
        whole = len(data) - 1
        value = int.from_bytes(data, "little") >> self.shift
        self._carry = data[-1:]
        return (value & ((1 << (8 * whole)) - 1)).to_bytes(whole, "little")


@dataclass(frozen=True, slots=True)
class Inflated:
    """``data``, and whether the deflate stream ended before more was wanted."""

    data: bytes
    ended: bool


def inflate_from(
    point: Point,
    window: bytes | None,
    read: Callable[[int], bytes],
    skip: int,
    length: int,
) -> Inflated:
    """Up to ``length`` bytes of the stream, ``skip`` bytes past ``point``.

    ``window``: the point's window (None only at the stream's start);
    ``read(at)`` gives compressed bytes at ``at`` (some, b"" at the blob's
    end).  zlib.error for bytes that do not inflate from there (a window or
    point that is not the stream's); ValueError for a window of another size.
    """
    if window is not None and len(window) != WINDOW:
        raise ValueError(f"a window of {len(window)} bytes, want {WINDOW}")
    inflater = (
        zlib.decompressobj(-15, zdict=window) if window is not None else zlib.decompressobj(-15)
    )
    shifted = Shifted(point.bits)
    need = skip + length
    parts: list[bytes] = []
    got = 0
    at = first_byte(point)
    while got < need and not inflater.eof:
        piece = read(at)
        if not piece:
            break
        at += len(piece)
        out = inflater.decompress(shifted.feed(piece), need - got)
        parts.append(out)
        got += len(out)
    data = b"".join(parts)
    return Inflated(data[skip:need], inflater.eof)
