"""What a reader through published indexes asks a caching source for on a miss, at once.

A reader of layers through their published indexes
(``lazyfs.blobs.gzip_remote``) that holds each file to its tar headers
knows where each file's data is, and the published data where each
interval's compressed bytes and window are.  On a miss, ``Asks.miss`` has
the source fetch in one go what this read and the next reads of its file
will inflate (``lazyfs.blobs.published_ahead``), each of which was a round
trip of its own after the one before:

- the read's intervals and those up to the end of the file it is for
  (``file_reach``), bounded by a budget of compressed bytes;
- the interval holding the tar headers of the first file the read
  reaches, which the check parses before anything is served
  (``headers_before``), once per file.

An interval asked with the one before it is asked without its window
(``chained``): it inflates from that one's tail (``tail_is_window``), the
one before first when that is no longer kept, back along the chain
(``chain_start``), at most ``chain_bytes`` of it.  So an interval is chained
only while the walk back from it reaches, within that bound, an interval
whose window was asked (``within``); else its window is asked with its
span, and a chain starts again there.  A walk then ends at an interval
kept or at a window fetched: once everything was fetched, nothing more is,
and a registry gone since is no EIO for it.  Only hints: every span and
window is still checked by the read that uses it.  Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from lazyfs.blobs.inflated import interval
from lazyfs.blobs.published_ahead import (
    CHAIN_BYTES,
    Need,
    ask_for,
    chain_start,
    file_reach,
    headers_before,
    interval_needs,
    intervals_to,
    tail_is_window,
)
from lazyfs.blobs.trace_run import UNIT
from lazyfs.index.published import PublishedData
from providers.digest import Digest
from providers.source import BlobSource

Ranges = Sequence[tuple[int, int]]  # (offset, length) of one blob


class Asks:
    """A reader's asks on misses, and what it must remember of them (module docstring)."""

    def __init__(self, blobs: BlobSource) -> None:
        self._blobs = blobs
        self._lock = threading.Lock()
        self._leads: set[tuple[Digest, int]] = set()  # files whose headers were asked for
        # Intervals asked without their window; shared with ``published_heard.Unheard``.
        self.chained: set[tuple[Digest, int]] = set()
        # Intervals whose window was asked (here or by their inflation): never chained after,
        # as a walk back from a later one may end at them (``_chains``).
        self._windowed: set[tuple[Digest, int]] = set()
        # Intervals whose window a trace replayed holds (``replayed``): never chained either.
        self._replayed: set[tuple[Digest, int]] = set()

    def is_chained(self, digest: Digest, number: int) -> bool:
        """Whether interval ``number`` was asked for without its window."""
        with self._lock:
            return (digest, number) in self.chained

    def miss(
        self,
        digest: Digest,
        data: PublishedData,
        starts: Sequence[int],
        ends: Sequence[int],
        offset: int,
        length: int,
        *,
        budget: int,
        chain_bytes: int = CHAIN_BYTES,
        kept: Callable[[Digest, int], bytes | None],
        unheld: Callable[[Digest, PublishedData, list[Need]], list[Need]],
    ) -> None:
        """Ask for what a read of ``[offset, offset + length)`` of the stream of gzip layer
        ``digest`` will inflate, if it misses; nothing when it does not.

        ``starts``, ``ends``: where each file's data is (``file_reach``);
        ``chain_bytes``: the reader's bound on a walk back along a chain (``chain_start``);
        ``kept(digest, start)``: the inflated interval from ``start``, if kept now;
        ``unheld``: the needs the reader does not hold already.
        """
        bounds = data.bounds
        end = min(offset + length, bounds[-1])
        if offset >= end:
            return  # past the stream's end

        def done(number: int) -> bool:
            return kept(digest, bounds[number]) is not None

        heads = self._heads(digest, data, starts, ends, offset, end)
        touched = [*heads, *range(interval(bounds, offset), interval(bounds, end - 1) + 1)]
        if all(done(n) for n in touched):
            return  # no miss
        reach = min(max(file_reach(starts, ends, offset, length), end), bounds[-1])
        first = interval(bounds, offset)
        while done(first) and first < interval(bounds, end - 1):
            first += 1
        last = intervals_to(data, first, reach, budget)
        numbers = sorted(n for n in {*heads, *range(first, last + 1)} if not done(n))
        if len(numbers) < 2:
            return  # the interval's own inflation asks for what it needs
        needs: list[Need] = []
        for n in numbers:
            with self._lock:
                # Its window is the tail of the interval before, asked with it (now or
                # before) or inflated: not asked.
                chained = (digest, n) in self.chained or (
                    (n - 1 in numbers or done(n - 1)) and self._chains(digest, data, n, chain_bytes)
                )
                # Its window asked once by a miss: the inflation asks it again (``_ask_ahead``).
                window = not chained and (digest, n) not in self._windowed
                if window:
                    self._windowed.add((digest, n))
            needs += interval_needs(digest, data, n, window=window)
        ask_for(self._blobs, unheld(digest, data, needs))

    def within(self, digest: Digest, data: PublishedData, number: int, chain_bytes: int) -> bool:
        """Make interval ``number`` chained, if it is not, when a walk back from it would
        reach an interval whose window was asked within ``chain_bytes``; whether it is chained.

        For an interval inflated from the tail of one kept, not asked for
        (``lazyfs.blobs.gzip_remote``): when False its window is to be asked.
        """
        with self._lock:
            return (digest, number) in self.chained or self._chains(
                digest, data, number, chain_bytes
            )

    def replayed(
        self, layers: Mapping[Digest, PublishedData], steps: Sequence[tuple[Digest, Ranges]]
    ) -> None:
        """Note each window of ``layers`` that a replayed prefetch trace holds (``steps``:
        its ranges, by blob; ``lazyfs.blobs.trace_run``): its interval is never chained.

        The trace holds the window of every interval its first start's
        program inflated or read from read-ahead (``lazyfs.blobs.published_heard``),
        which may have inflated it from its window where this start, without
        that read-ahead, would chain it to the interval before it and walk
        back to intervals the trace lacks.  Not chained, it inflates from its
        window, or from a kept tail; a miss still asks for it.  Held in
        the trace's ``UNIT``s, as the trace keeps what a start read: a window
        whose units another one's read had brought is not a range of its own.
        """
        sizes = {data.windows: data.windows_size for data in layers.values() if data.windows}
        spans: dict[Digest, list[tuple[int, int]]] = {}
        for blob, ranges in steps:
            if (size := sizes.get(blob)) is not None:
                # Within the blob, as units (first, last): a trace's ranges are hostile.
                spans.setdefault(blob, []).extend(
                    (offset // UNIT, (min(offset + length, size) - 1) // UNIT)
                    for offset, length in ranges
                    if 0 <= offset < size and length > 0
                )
        units: dict[Digest, set[int]] = {}
        for blob, pairs in spans.items():
            # Each unit added once: thousands of ranges over one large blob were
            # thousands of times its units.
            held = units[blob] = set()
            reach = -1
            for first, last in sorted(pairs):
                held.update(range(max(first, reach + 1), last + 1))
                reach = max(reach, last)
        for digest, data in layers.items():
            held = units.get(data.windows, set()) if data.windows else set()
            for number, point in enumerate(data.points or () if held else ()):
                if (window := point.window) is None:
                    continue
                first, last = window.offset // UNIT, (window.offset + window.length - 1) // UNIT
                if all(u in held for u in range(first, last + 1)):
                    with self._lock:
                        self._replayed.add((digest, number))

    def asked_window(self, digest: Digest, number: int) -> None:
        """Note that interval ``number``'s window was asked for, by its inflation."""
        with self._lock:
            self._windowed.add((digest, number))

    def _chains(self, digest: Digest, data: PublishedData, number: int, chain_bytes: int) -> bool:
        """``within`` with the lock held, for an interval not chained yet."""
        key = (digest, number)
        if not tail_is_window(data, number) or key in self._windowed or key in self._replayed:
            return False  # chained, a walk through it could end past it at the bound

        def linked(n: int) -> bool:
            return (digest, n) in self.chained

        def nothing_kept(_n: int) -> bool:
            return False

        # The walk with nothing kept: it stops at an interval not chained (whose window
        # was asked, or the stream's first) or, at the bound, at one chained: its window
        # was never asked.
        if linked(chain_start(data, number, nothing_kept, linked, chain_bytes)):
            return False
        self.chained.add((digest, number))
        return True

    def _heads(
        self,
        digest: Digest,
        data: PublishedData,
        starts: Sequence[int],
        ends: Sequence[int],
        offset: int,
        end: int,
    ) -> list[int]:
        """The intervals holding ``headers_before`` the read, the first time a read reaches
        that file; none after.

        The check parses a file's headers once: a later read of the file
        needs none of them.  Asked once, the source has their bytes, whether
        or not the check has come yet.
        """
        found = headers_before(starts, ends, offset, end)
        if found is None:
            return []
        with self._lock:
            if (digest, found[0]) in self._leads:
                return []
            self._leads.add((digest, found[0]))
        bounds = data.bounds
        return list(range(interval(bounds, found[0]), interval(bounds, found[1] - 1) + 1))
