"""Inflating a gzip stream from one of its checkpoints, with that checkpoint's window only.

A deflate stream can be entered at a block boundary given the 32 KiB of
output before it (the *window*: what back-references there may reach) and
the bit the block starts at.  zran (``indexed_gzip``) does this from an
index it imports.  A published index (format 2) keeps each window apart,
fetched only when a read starts there, so each inflate hands zran an index
of three points: the stream's start (it wants one), the checkpoint with its
window, and the stream's end (so that zran takes the checkpoint's interval
as covered; its window is never used: nothing is read from the end on).

zran reads the compressed bytes through a file object (``_Compressed``)
that gives it what ``read(at, size)`` returns, never past the end of the
span holding ``at``, so a read fetches only the spans it needs.  zran keeps
the bit offset's alignment (``inflatePrime``), which stored blocks need: a
start mid-byte cannot be had with Python's zlib.

Blocking; a handle per call, closed before it returns.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

from lazyfs.index.artifact import WINDOW, Point

_GZIDX_HEAD = struct.Struct("<5sBBQQIII")
_GZIDX_POINT = struct.Struct("<QQBB")
# Compressed bytes zran asks for at a time; a read stops at a span's end anyway.
READ_BUFFER = 64 << 10


def zran_index(first: Point, point: Point, window: bytes | None, size: int, tar_size: int) -> bytes:
    """indexed_gzip's export of an index of ``first``, ``point`` (with ``window``) and the end."""
    rows = [(first.offset, first.position, first.bits, 0)]
    windows = []
    if point is not first:
        if window is None or len(window) != WINDOW:
            raise ValueError("a checkpoint past the stream's start needs its 32 KiB window")
        rows.append((point.offset, point.position, point.bits, 1))
        windows.append(window)
    rows.append((size, tar_size, 0, 1))
    windows.append(bytes(WINDOW))
    head = _GZIDX_HEAD.pack(b"GZIDX", 1, 0, size, tar_size, 1 << 20, WINDOW, len(rows))
    return head + b"".join(_GZIDX_POINT.pack(*row) for row in rows) + b"".join(windows)


def inflate_from(
    first: Point,
    point: Point,
    window: bytes | None,
    read: Callable[[int, int], bytes],
    sizes: tuple[int, int],
    offset: int,
    length: int,
) -> bytes:
    """Up to ``length`` bytes of the tar stream at ``offset`` (in ``point``'s interval or after).

    ``sizes``: the blob's and the tar stream's lengths; ``read(at, size)``
    gives up to ``size`` compressed bytes at ``at`` (short at a span's end,
    b"" at the blob's).  OSError or ValueError when zran cannot inflate
    (``read``'s own OSError among them).
    """
    # Loaded with the first gzip read only.  The unbuffered handle: the
    # buffered one decodes ahead of a read, which needs spans the read does not.
    from indexed_gzip.indexed_gzip import _IndexedGzipFile  # type: ignore[import-untyped]

    size, tar_size = sizes
    blob = _Compressed(read, size)
    handle = _IndexedGzipFile(fileobj=blob, auto_build=False, readbuf_size=READ_BUFFER)
    try:
        handle.import_index(fileobj=io.BytesIO(zran_index(first, point, window, size, tar_size)))
        handle.seek(offset)
        parts = []
        left = length
        while left > 0 and (got := handle.read(left)):
            parts.append(got)
            left -= len(got)
    except (OSError, ValueError) as error:
        if blob.failure is not None:
            raise blob.failure from error  # what zran's own error does not say
        raise
    finally:
        handle.close()
    return b"".join(parts)


class _Compressed(io.RawIOBase):
    """The compressed blob as zran reads it: what ``read`` gives, nothing else."""

    def __init__(self, read: Callable[[int, int], bytes], size: int) -> None:
        super().__init__()
        self._read = read
        self.size = size
        self.position = 0
        self.failure: OSError | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        """Some bytes at the position: short reads are no end of file to zran (only b"" is)."""
        if size is None or size < 0:
            size = self.size - self.position
        try:
            got = self._read(self.position, size)
        except OSError as error:
            self.failure = error
            raise
        self.position += len(got)
        return got

    def readinto(self, buffer: Any) -> int:
        got = self.read(len(buffer))
        buffer[: len(got)] = got
        return len(got)
