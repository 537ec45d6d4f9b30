"""The program's reads of a published-index layer, told to the trace when read-ahead came first.

A first start's read-ahead (``lazyfs.fs.predict``) reads on threads whose
reads no prefetch trace keeps (``lazyfs.blobs.trace_run.unrecorded``): the
trace is to hold what the program read, in its order.  But the reader of
published-index layers (``lazyfs.blobs.gzip_remote``) keeps the spans and
inflated intervals it fetched, so when the program then reads those bytes
its blob source, whose watcher records the trace, sees nothing, and the
trace would miss them.  ``Unheard`` remembers the intervals (spans, for a
tar layer) such threads read, and on the first read of one by a recorded
thread tells the watcher of the blob ranges it is made of, as a fetch of
them then would have: the program's read, where it comes.  So too the
window of an interval a recorded thread inflated from the tail of the one
before (``Unheard.tail``), which no one fetched, and the tar headers
before a file that the reader parsed on such a thread's read of the file
(``lazyfs.blobs.entry_check``: once per file) and not on the program's.
Every read is noted before anything is fetched for it, and a recorded
thread's again once served (``heard``): what read-ahead fetched and kept
while the program's read waited is heard then.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

from lazyfs.blobs.inflated import interval
from lazyfs.blobs.published_ahead import interval_needs
from lazyfs.blobs.trace_run import Watched, recorded
from lazyfs.index.published import PublishedData
from providers.digest import Digest
from providers.source import BlobSource


class Unheard:
    """What unrecorded threads read that no recorded thread has yet (module docstring)."""

    def __init__(self, blobs: BlobSource, chained: set[tuple[Digest, int]] | None = None) -> None:
        self._blobs = blobs
        self._lock = threading.Lock()
        self._units: set[tuple[Digest, int]] = set()
        # Intervals inflated from the tail of the one before, not from their window: that
        # one's span is what the program's read of them needs (the reader's set, shared).
        self._chained = chained if chained is not None else set()

    def read(
        self,
        digest: Digest,
        data: PublishedData,
        offset: int,
        length: int,
        extents: Callable[[], tuple[Sequence[int], Sequence[int]]] | None = None,
    ) -> None:
        """Note a read of layer ``digest``'s tar stream ``[offset, offset + length)``.

        ``extents``: where each file's data starts and ends, when the reader
        holds files to their tar headers (``lazyfs.blobs.entry_check``): the
        headers before each file the read reaches are read as well, the
        first time, by whichever thread reads first.
        """
        if not recorded():
            units = _reached(data, offset, length, extents)
            with self._lock:
                self._units.update((digest, n) for n in units)
            return
        if not self._units:
            return  # nothing read ahead: the usual case, and no lock for it
        reached = _reached(data, offset, length, extents)
        with self._lock:
            heard = [n for n in reached if (digest, n) in self._units]
            for n in list(heard):
                while (digest, n) in self._chained and (digest, n - 1) in self._units:
                    n -= 1
                    heard.append(n)
            self._units.difference_update((digest, n) for n in heard)
        watcher = self._blobs.watcher if isinstance(self._blobs, Watched) else None
        if watcher is None:
            return
        for number in heard:  # outside the lock: the watcher takes its own
            for blob, at, size in _needs(digest, data, number):
                watcher.read(blob, at, size)

    def heard(
        self,
        digest: Digest,
        data: PublishedData,
        offset: int,
        length: int,
        extents: Callable[[], tuple[Sequence[int], Sequence[int]]] | None = None,
    ) -> None:
        """``read`` once a recorded thread's read is served; nothing for any other.

        What an unrecorded thread read and kept while the program's read
        waited (on a fetch of another part of it) was noted before it was
        fetched: heard now, after the program's own fetches.
        """
        if recorded():
            self.read(digest, data, offset, length, extents)

    def tail(self, data: PublishedData, number: int) -> None:
        """Note that interval ``number`` was inflated from the tail of the one before.

        Its window was not read; a start that replays this one's trace may
        not have the interval before inflated first (the thread that did so
        here was not recorded, or its reads come in another order), and
        reads it.  So a recorded thread tells the watcher of the window, as
        a fetch of it then would have: the trace holds every window a start
        needed, whoever fetched what it was inflated from.  For replays by an
        earlier lazyfs (a trace published beside the image is read by other
        machines), which fetch the windows a trace names; this one leaves them
        out and asks for the windows its intervals need (``Asks.replayed``).
        """
        window = data.points[number].window if data.points is not None else None
        if window is None or data.windows is None or not recorded():
            return
        watcher = self._blobs.watcher if isinstance(self._blobs, Watched) else None
        if watcher is not None:
            watcher.read(data.windows, window.offset, window.length)


def _reached(
    data: PublishedData,
    offset: int,
    length: int,
    extents: Callable[[], tuple[Sequence[int], Sequence[int]]] | None,
) -> list[int]:
    """The units a read reaches: those of the headers before each file it reaches (from the
    end of the file before), then its own; each once, in that order."""
    found: dict[int, None] = {}
    if extents is not None:
        starts, ends = extents()
        end = offset + length
        for number in range(max(0, bisect.bisect_right(starts, offset) - 1), len(starts)):
            if starts[number] >= end:
                break
            if ends[number] > offset:
                lead = ends[number - 1] if number else 0
                found.update(dict.fromkeys(_units(data, lead, starts[number] - lead)))
    found.update(dict.fromkeys(_units(data, offset, length)))
    return list(found)


def _units(data: PublishedData, offset: int, length: int) -> range:
    """The intervals (a tar layer: spans) that a read of the stream reaches."""
    end = min(offset + length, data.size if data.points is None else data.bounds[-1])
    if length <= 0 or offset >= end:
        return range(0)
    if data.points is not None:
        return range(interval(data.bounds, offset), interval(data.bounds, end - 1) + 1)
    first = bisect.bisect_right(data.starts, offset) - 1
    return range(max(first, 0), bisect.bisect_right(data.starts, end - 1))


def _needs(digest: Digest, data: PublishedData, number: int) -> list[tuple[Digest, int, int]]:
    if data.points is not None:
        return interval_needs(digest, data, number)
    span = data.spans[number]
    return [(digest, span.offset, span.length)]
