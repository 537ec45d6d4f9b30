"""Inflated gzip checkpoint intervals, kept for the reads that come back to them.

A read of a gzip layer through zran inflates from the checkpoint before it
(up to the checkpoint spacing, 1 MiB, of tar stream) just to reach its
offset.  A program's reads are seldom in order: the kernel faults in pages
of a mapped binary or library here and there, each a FUSE read of its own,
and each inflated again from the same checkpoint.  Inflating the whole
interval between two checkpoints once, and serving every read inside it
from memory, costs about one such inflate per interval instead of one per
read.  The bytes are the same bytes zran gives (from verified spans only);
this keeps them a while.

``read_intervals`` serves a read so; ``interval`` is pure; ``Kept`` is a
thread-safe LRU of intervals by (layer, start), bounded in bytes.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from providers.digest import Digest

# Intervals longer than this (a sparse index, or the stream's tail) are not
# inflated whole: their reads go to zran on their own, as before.
MAX_INTERVAL = 4 << 20
DEFAULT_KEEP_BYTES = 16 << 20


def interval(starts: Sequence[int], offset: int) -> tuple[int, int]:
    """The interval ``[start, stop)`` of checkpoint ``starts`` (sorted) holding ``offset``.

    Before the first checkpoint (zran's first is at the stream's start) the
    interval starts at 0; after the last, it runs ``MAX_INTERVAL`` bytes on,
    the stream's end being unknown here.
    """
    at = bisect.bisect_right(starts, offset) - 1
    start = starts[at] if at >= 0 else 0
    stop = starts[at + 1] if at + 1 < len(starts) else start + MAX_INTERVAL
    return start, stop


def read_intervals(
    kept: Kept,
    digest: Digest,
    starts: Sequence[int] | None,
    offset: int,
    length: int,
    zran: Callable[[int, int], bytes],
) -> bytes:
    """Up to ``length`` bytes at ``offset`` of layer ``digest``'s tar stream.

    ``starts``: the layer's checkpoints (tar offsets, sorted), None when not
    known yet; ``zran(at, size)`` inflates up to ``size`` bytes at ``at``
    (short only at the stream's end).  Each interval a read touches is
    inflated whole and kept, unless it is longer than ``MAX_INTERVAL``.
    """
    parts = []
    at, end = offset, offset + length
    while at < end:
        start, block = _block(kept, digest, starts, at, end, zran)
        piece = block[at - start : end - start]
        if not piece:
            break  # the end of the stream
        parts.append(piece)
        at += len(piece)
    return b"".join(parts)


def _block(
    kept: Kept,
    digest: Digest,
    starts: Sequence[int] | None,
    at: int,
    end: int,
    zran: Callable[[int, int], bytes],
) -> tuple[int, bytes]:
    """(start, bytes from start): the inflated interval holding ``at``, else ``[at, end)``."""
    if not starts:
        return at, zran(at, end - at)
    start, stop = interval(starts, at)
    found = kept.get(digest, start)
    if found is not None:
        return start, found
    if stop - start > MAX_INTERVAL:
        return at, zran(at, end - at)
    found = zran(start, stop - start)
    if start >= starts[-1] and len(found) == stop - start:
        # The stream's tail runs on past MAX_INTERVAL: no whole interval to keep.
        return at, zran(at, end - at)
    kept.put(digest, start, found)
    return start, found


class Kept:
    """Inflated intervals by (layer, start), least recently used out first, up to ``max_bytes``."""

    def __init__(self, max_bytes: int = DEFAULT_KEEP_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[Digest, int], bytes] = OrderedDict()
        self._bytes = 0

    def get(self, digest: Digest, start: int) -> bytes | None:
        with self._lock:
            found = self._kept.get((digest, start))
            if found is not None:
                self._kept.move_to_end((digest, start))
            return found

    def put(self, digest: Digest, start: int, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._kept.pop((digest, start), None)
            self._bytes -= len(old) if old is not None else 0
            self._kept[(digest, start)] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._kept.popitem(last=False)
                self._bytes -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._bytes = 0
