"""Inflated gzip checkpoint intervals: each inflated whole, checked, and kept a while.

A read of a gzip layer through its published index inflates from the
checkpoint before it.  The tar stream between two checkpoints (an
*interval*) is inflated whole, so that it can be held to its digest in the
index before any of it is served, and kept: a program's reads are seldom
in order (the kernel faults in pages of a mapped binary here and there,
each a FUSE read of its own), and every read inside a kept interval costs
a copy, not another inflate.

``read_intervals`` serves a read so; ``interval`` is pure; ``Kept`` is a
thread-safe LRU of intervals by (layer, start), bounded in bytes.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from providers.digest import Digest

DEFAULT_KEEP_BYTES = 16 << 20


def interval(bounds: Sequence[int], offset: int) -> int:
    """The number of the interval holding ``offset``: ``bounds`` are the checkpoints, then the end.

    -1 past the end.
    """
    if offset >= bounds[-1]:
        return -1
    return max(0, bisect.bisect_right(bounds, offset) - 1)


def read_intervals(
    kept: Kept,
    digest: Digest,
    bounds: Sequence[int],
    offset: int,
    length: int,
    inflate: Callable[[int], bytes],
) -> bytes:
    """Up to ``length`` bytes at ``offset`` of layer ``digest``'s tar stream.

    ``bounds``: the layer's checkpoints (tar offsets, sorted, the first 0)
    and the stream's length; ``inflate(number)`` gives interval ``number``
    whole, checked (``bounds[number + 1] - bounds[number]`` bytes).  Short
    only at the stream's end.
    """
    parts = []
    at, end = offset, min(offset + length, bounds[-1])
    while at < end:
        number = interval(bounds, at)
        start = bounds[number]
        block = kept.get(digest, start)
        if block is None:
            block = inflate(number)
            kept.put(digest, start, block)
        parts.append(block[at - start : end - start])
        at = bounds[number + 1]
    return b"".join(parts)


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
