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
and a registry gone since is no EIO for it.  A replayed prefetch trace
chains the intervals it reads in a row the same way, and has the windows
of the others asked for as the mount opens (``Asks.replayed``).  Only
hints: every span and window is still checked by the read that uses it.
Thread-safe.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lazyfs.blobs.inflated import interval
from lazyfs.blobs.published_ahead import (
    CHAIN_BYTES,
    PIECE_BYTES,
    Need,
    ask_for,
    chain_start,
    compressed_span,
    file_reach,
    headers_before,
    interval_needs,
    intervals_to,
    reads_windows,
    tail_is_window,
)
from lazyfs.index.published import PublishedData, load_published
from providers.digest import Digest
from providers.manifest import Layer
from providers.source import BlobSource
from providers.spans import covers, union

Ranges = Sequence[tuple[int, int]]  # (offset, length) of one blob
# Windows a replayed trace has asked for at once, at most: some 13 KB each.
REPLAYED_WINDOWS = 256
# What ``replay_order`` walks at most, in times the units and intervals of the layers.
REPLAY_WALK = 4
UNIT = 64 << 10  # what a walk's cost counts bytes in: a trace range costs the units it reaches


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
        # Intervals whose window a replayed trace asked for (``replayed``): never chained
        # either, nor their window asked again by a miss.
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
                # Its window asked once, by a miss or a replay: the inflation asks it again
                # (``_ask_ahead``).
                key = (digest, n)
                window = not chained and key not in self._windowed and key not in self._replayed
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
        self,
        layers: Mapping[Digest, PublishedData],
        steps: Sequence[tuple[Digest, Ranges]],
        chain_bytes: int = CHAIN_BYTES,
    ) -> None:
        """Chain, or ask the window of, each interval of ``layers`` a replayed prefetch trace
        reads (``steps``: its ranges, by blob, in order; ``lazyfs.blobs.trace_run``).

        The replay brings the spans; the windows are asked for here, now, as
        exact ranges (the daemon fetches them as pieces, and keeps them in
        memory only, as any piece), and only those the intervals need.  In
        the order the trace first reaches them: an interval reached after the
        one before it, when the trace holds that one's whole span, is chained
        (``_chains``: it inflates from that one's tail, as when the trace was
        recorded, where its program read the one before first); any other
        has its window asked for, and is never chained.  Whole, byte for
        byte: the daemon fetches a trace's ranges as they are, the parts
        of chunks they cover in part as pieces (``lazyfs.cache.partial``).
        At most ``REPLAYED_WINDOWS`` windows (for
        the ``layers`` together; a mount's reader holds one): from the first
        interval past them that needs one, nothing is chained or asked, and
        the reads ask for what they need, as without a trace; so too when
        the source did not take every ask.  A trace's ranges are hostile:
        cut to the blob, and walked within a bound in units
        (``replay_order``).  The trace's own ranges of windows blobs are not
        replayed (``trace_run.client_steps``): chunk by chunk, they brought
        seven times the windows' bytes.
        """
        order, held = replay_order(layers, steps)
        done: set[tuple[Digest, int]] = set()
        needs: list[Need] = []
        asked: list[tuple[Digest, int]] = []
        for digest, number in order:
            data = layers[digest]
            assert data.points is not None  # replay_order: a gzip layer's intervals only
            done.add((digest, number))
            window = data.points[number].window
            with self._lock:
                if (
                    (digest, number - 1) in done
                    and covers(held[digest], *compressed_span(data, number - 1))
                    and self._chains(digest, data, number, chain_bytes)
                ):
                    continue  # chained: inflated from the tail of the one before
                if len(needs) >= REPLAYED_WINDOWS:
                    break  # no chain may end at an interval whose window was not asked
                if window is None or data.windows is None:
                    continue
                self._replayed.add((digest, number))
            asked.append((digest, number))
            needs.append((data.windows, window.offset, window.length))
        if not ask_for(self._blobs, needs, most=PIECE_BYTES):
            with self._lock:  # not all asked: a miss asks for them, as without a trace
                self._replayed.difference_update(asked)

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


def ask_replayed_windows(
    blobs: BlobSource,
    layers_dir: Path,
    layers: Sequence[Layer],
    steps: Sequence[tuple[Digest, Ranges]],
) -> None:
    """``Asks.replayed``'s asks for each of ``layers`` read through a published gzip index
    kept under ``layers_dir``: the windows a replay of ``steps`` needs, asked for ahead of
    the mount (``lazyfs.fs.mount_ahead``), which asks for them again as it opens the
    layer, some tenths of a second later; the daemon fetches each once. Blocking."""
    for layer in layers:
        found = load_published(layers_dir, layer, entries=False)
        if found is not None and found[2].points is not None:
            reads_windows(blobs, layer.digest, found[2])  # its windows blob, read by pieces
            Asks(blobs).replayed({layer.digest: found[2]}, steps)


def replay_order(
    layers: Mapping[Digest, PublishedData], steps: Sequence[tuple[Digest, Ranges]]
) -> tuple[list[tuple[Digest, int]], dict[Digest, list[tuple[int, int]]]]:
    """The intervals of the gzip ``layers`` that ``steps`` reach, in the order first reached,
    and the bytes of each layer's blob they hold: (start, end), ascending and disjoint.

    Walks at most ``REPLAY_WALK`` times the layers' units and intervals,
    however many ranges name them; the ranges past that are left out.
    """
    order: list[tuple[Digest, int]] = []
    held: dict[Digest, list[tuple[int, int]]] = {digest: [] for digest in layers}
    reached: set[tuple[Digest, int]] = set()
    firsts = {
        digest: [compressed_span(data, n)[0] for n in range(len(data.points))]
        for digest, data in layers.items()
        if data.points
    }
    budget = REPLAY_WALK * sum(data.size // UNIT + len(data.points or ()) + 1
                               for data in layers.values())  # fmt: skip
    for blob, ranges in steps:
        if (starts := firsts.get(blob)) is None:
            continue
        size = layers[blob].size
        for offset, length in ranges:
            end = min(offset + length, size)
            if not 0 <= offset < end:
                continue
            first, last = (
                bisect.bisect_right(starts, offset) - 1,
                bisect.bisect_right(starts, end - 1),
            )
            budget -= (end - 1) // UNIT - offset // UNIT + 1 + last - first
            if budget < 0:
                return order, {digest: union(spans) for digest, spans in held.items()}
            held[blob].append((offset, end))
            for number in range(max(first, 0), last):
                if (blob, number) not in reached:
                    reached.add((blob, number))
                    order.append((blob, number))
    return order, {digest: union(spans) for digest, spans in held.items()}
