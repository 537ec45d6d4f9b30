"""Pieces: small ranges of a blob fetched as they are, not as the whole chunks around them.

A layer read through its published index inflates each checkpoint interval
from a window: some 13 KB of zlib at an offset of the index's windows blob,
which nothing else reads. Through chunks, each cost the 64 KiB chunk around
it (in the Debian cold-start bench, 1.1 MB over the link for fifteen
windows, on a link that is the start's bottleneck). A mount asks for such
a range as a piece (``Read.piece``, ``Prefetch.piece``); ``Pieces`` fetches
that range alone, one flight however many readers wait, keeps it in memory
(least recently used out past ``max_bytes``) and answers a read of it, or
of a range inside it, with its bytes.

Kept in memory only: a piece lost (evicted, the daemon restarted) is a
round trip for a few KB again, and, with the registry gone since, an EIO
for the read that needed it. A mount replaying a trace asks for the
windows it needs as pieces too, as it opens its layers
(``lazyfs.blobs.published_asks.Asks.replayed``), and for the parts of
the chunks the trace covers only in part (``lazyfs.cache.partial``; the
replay fetches them in its turn, ``bring``), and reads those parts as
pieces. A read of a range whose
chunks are all cached or in flight (another blob's chunks, asked by
an earlier lazyfs's replay) is served from them (the daemon's ``answer``).
A mount keeps the windows it read itself (``lazyfs.blobs.gzip_remote``),
for when the daemon restarts. A reader waiting on a
piece counts as one waiting on a fetch (``demand``): background fetch and
replays hold back. A failure of another origin's fetch (a blob in two
repositories) is not a reader's: it fetches through its own. As for
chunks, a source's bytes are trusted: the reader checks each window against
the sha256 its index gives, and has a wrong one evicted (``evict``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from lazyfs.cache.landing import Flight
from providers.digest import Digest
from providers.errors import TemporaryFailure
from providers.source import BlobSource

log = logging.getLogger(__name__)

MAX_PIECE = 256 << 10  # a longer range is fetched as chunks; well within a frame (1 MiB)
MAX_PIECES_ASKED = 64  # a prefetch of more ranges fetches them as chunks: each is a scan here
MAX_KEPT = 4096  # pieces kept, whatever their bytes: a read of a blob scans its own
DEFAULT_MAX_BYTES = 16 << 20
ENTRY_COST = 128  # bytes a kept piece is charged besides its own: its key and its places
Key = tuple[Digest, int, int]  # blob, offset, length asked


@dataclass
class _Flight(Flight):
    """One piece being fetched, as a chunk's flight, and what came (``data``)."""

    data: bytes | None = None


class Pieces:
    """Pieces fetched through ``run`` (a worker thread) under ``limiter``, tasks of ``nursery``."""

    def __init__(
        self,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
        run: Callable[..., Awaitable[bytes]],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        demand: Callable[[int], None] = lambda change: None,
    ) -> None:
        self._nursery = nursery
        self._demand = demand  # a reader waits (``Fetcher.demand``): background work holds back
        self._limiter = limiter
        self._run = run
        self.max_bytes = max_bytes
        self._kept: OrderedDict[Key, bytes] = OrderedDict()  # least recently used first
        self._blobs: dict[Digest, set[Key]] = {}  # each blob's kept pieces
        self._flights: dict[Digest, list[tuple[Key, _Flight]]] = {}  # each blob's
        self.used = 0
        self.fetches = 0
        self.fetched_bytes = 0

    async def read(self, source: BlobSource, digest: Digest, offset: int, length: int) -> bytes:
        """Blob bytes ``[offset, offset + length)``, kept, or fetched as one piece now.

        Short only where the blob ends. Raises what the fetch raised, when it went
        through ``source``; after another origin's failure, fetches it through ours.
        """
        theirs = False  # another origin's flight failed: start our own
        while True:
            found = self._find(digest, offset, length)
            if found is not None:
                return found
            # After another origin's failure, only a flight through ours.
            key, flight = self._flight(digest, offset, length, source if theirs else None)
            if flight is None:
                key, flight = self._start(source, (digest, offset, length))
            self._demand(+1)
            try:
                await flight.done.wait()
            finally:
                self._demand(-1)
            if flight.error is not None:
                if flight.source is source:
                    raise flight.error
                theirs = True
            elif flight.data is not None:  # kept, or already pushed out again
                return _within(key, flight.data, offset, length)

    def prefetch(self, source: BlobSource, digest: Digest, offset: int, length: int) -> int:
        """Start fetching the range as a piece unless it is kept or coming; 1 when started."""
        if self.holds(digest, offset, length):
            return 0
        self._start(source, (digest, offset, length))
        return 1

    def holds(self, digest: Digest, offset: int, length: int) -> bool:
        """Whether the range is kept, or coming in a flight."""
        return (
            self._find(digest, offset, length) is not None
            or self._flight(digest, offset, length)[1] is not None
        )

    async def bring(
        self,
        source: BlobSource,
        digest: Digest,
        offset: int,
        length: int,
        limiter: trio.CapacityLimiter,
    ) -> bool:
        """Fetch the range as a piece, under ``limiter`` (a trace replay's own), unless it is
        kept or coming, and wait until it is in or failed (logged: left to the reads);
        whether it came. Not a reader: it counts as no demand."""
        if self._find(digest, offset, length) is not None:
            return True
        _key, flight = self._flight(digest, offset, length)
        if flight is None:
            _key, flight = self._start(source, (digest, offset, length), limiter)
        await flight.done.wait()
        return flight.error is None

    @property
    def in_flight(self) -> int:
        """Pieces being fetched now."""
        return sum(len(flights) for flights in self._flights.values())

    def evict(self, digest: Digest, offset: int, length: int) -> int:
        """Drop the kept pieces of ``digest`` that hold any of the range; how many."""
        end = offset + length
        gone = [k for k in self._blobs.get(digest, ()) if k[1] < end and offset < k[1] + k[2]]
        for key in gone:
            self._drop(key)
        return len(gone)

    def _find(self, digest: Digest, offset: int, length: int) -> bytes | None:
        exact = (digest, offset, length)  # as asked: no scan (a replay asks its own)
        for key in (exact,) if exact in self._kept else self._blobs.get(digest, ()):
            if _holds(key, digest, offset, length):
                self._kept.move_to_end(key)
                return _within(key, self._kept[key], offset, length)
        return None

    def _flight(
        self, digest: Digest, offset: int, length: int, through: BlobSource | None = None
    ) -> tuple[Key, _Flight | None]:
        """A flight holding the range (``through`` that source only, if given)."""
        for key, flight in self._flights.get(digest, ()):
            if _holds(key, digest, offset, length) and (
                through is None or flight.source is through
            ):
                return key, flight
        return (digest, offset, length), None

    def _start(
        self, source: BlobSource, key: Key, limiter: trio.CapacityLimiter | None = None
    ) -> tuple[Key, _Flight]:
        flight = _Flight(source)  # beside any of the same range through another origin
        self._flights.setdefault(key[0], []).append((key, flight))
        self.fetches += 1
        self._nursery.start_soon(self._fetch, source, key, flight, limiter or self._limiter)
        return key, flight

    async def _fetch(
        self, source: BlobSource, key: Key, flight: _Flight, limiter: trio.CapacityLimiter
    ) -> None:
        """Fetch one piece and keep it; never raises but cancellation (the daemon stopping)."""
        digest, offset, length = key
        try:
            async with limiter:
                data = await self._run(source.read_range, digest, offset, length)
            self.fetched_bytes += len(data)
            flight.data = data
            self._keep(key, data)
        except Exception as failure:
            log.warning("fetch of %s bytes %d+%d failed: %s", digest, offset, length, failure)
            flight.error = failure
        except BaseException:
            flight.error = TemporaryFailure(
                f"fetch of {digest} stopped: the cache daemon is stopping"
            )
            raise
        finally:
            flights = self._flights[digest]
            flights[:] = [entry for entry in flights if entry[1] is not flight]
            if not flights:
                del self._flights[digest]
            flight.done.set()

    def _keep(self, key: Key, data: bytes) -> None:
        if key in self._kept:
            self._drop(key)
        if not data:
            return  # past the blob's end: nothing to keep
        self._kept[key] = data
        self._blobs.setdefault(key[0], set()).add(key)
        self.used += ENTRY_COST + len(data)
        while (self.used > self.max_bytes or len(self._kept) > MAX_KEPT) and self._kept:
            self._drop(next(iter(self._kept)))

    def _drop(self, key: Key) -> None:
        self.used -= ENTRY_COST + len(self._kept.pop(key))
        keys = self._blobs[key[0]]
        keys.discard(key)
        if not keys:
            del self._blobs[key[0]]


def _holds(key: Key, digest: Digest, offset: int, length: int) -> bool:
    """Whether the piece asked as ``key`` covers the range (to the blob's end, if short)."""
    return key[0] == digest and key[1] <= offset and offset + length <= key[1] + key[2]


def _within(key: Key, data: bytes, offset: int, length: int) -> bytes:
    start = offset - key[1]
    return data[start : start + length]
