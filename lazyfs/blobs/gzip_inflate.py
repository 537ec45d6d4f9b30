"""Inflating a gzip stream from one of its checkpoints, with that checkpoint's window only.

A deflate stream can be entered at a block boundary given the 32 KiB of
output before it (the *window*: what back-references there may reach) and
the bit the block starts at.  A published index (format 2) keeps each window
apart, fetched only when a read starts there, so each inflate hands the
cursor of ``lazyfs.index.gzip_reads`` (entering mid-byte as zlib's
``inflatePrime`` would) a table of the one checkpoint, and the window.

The cursor reads the compressed bytes through ``read(at, size)``, which
never gives bytes past the end of the span holding ``at``, and inflates with
zlib, which reads no byte past the last one its output needs (ISA-L reads a
few more: the next interval's span, fetched before its time), so a read
fetches only the spans it needs.

Blocking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lazyfs.index.artifact import WINDOW, Point

if TYPE_CHECKING:
    from lazyfs.index.gzip_points import Checkpoint


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
    b"" at the blob's).  OSError or ValueError when the stream cannot be
    inflated from there (``read``'s own OSError among them).
    """
    # Loaded with the first gzip read only: an eStargz layer's mount needs none of it.
    from lazyfs.index.gzip_points import Checkpoint, Checkpoints
    from lazyfs.index.gzip_reads import INFLATE_ERROR, Cursor

    if point is not first and (window is None or len(window) != WINDOW):
        raise ValueError("a checkpoint past the stream's start needs its 32 KiB window")
    size, tar_size = sizes
    entry = Checkpoint(point.offset, point.bits, point.position, None if point is first else 0)
    table = Checkpoints(size, tar_size, (entry,), (point.position,))
    try:
        return Cursor(table, exact_input=True).read(_Given(read, window), offset, length)
    except INFLATE_ERROR as error:
        raise ValueError(f"it does not inflate: {error}") from error


class _Given:
    """``read`` and the one window, as the cursor asks for them."""

    def __init__(self, read: Callable[[int, int], bytes], window: bytes | None) -> None:
        self.compressed = read
        self._window = window

    def window(self, point: Checkpoint) -> bytes:
        assert self._window is not None  # checked by inflate_from
        return self._window
