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
an earlier lazyfs's replay) is served from them (the daemon's ``answer``;
chunks are every origin's, ``lazyfs.cache.flight``).
A mount keeps the windows it read itself (``lazyfs.blobs.gzip_remote``),
for when the daemon restarts. A reader waiting on a
piece counts as one waiting on a fetch (``demand``): background fetch and
replays hold back.

A piece is its origin's: kept and fetched by the source it came through
(the daemon resolves one source per origin, registry and repository), and
given only to reads through that source, never to another origin's, nor
is another origin's flight joined. A repository may name any digest and
answer bytes of its own for it: the blob of another image, in another
repository, is then fetched twice (a few KB), not answered from what that
repository served, nor failed by its failure. A source's bytes are trusted
by the reads through it: the reader checks each window against the sha256
its index gives, and has a wrong one evicted (``evict``: every origin's
pieces of the range, an Evict names none), then reads it through its own
source again. A trace replay's look (``holds``) is through its source too.
So are bytes a mount found wrong in the chunks, which are every origin's:
read again, they are a piece of its origin's (``Read.own``), whatever the
chunks hold or another origin has in flight.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
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
# A kept piece's place: its source's ``id`` (held alive by the entry, so never
# another's while it is kept), and its key.
Place = tuple[int, Key]


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
        # The kept pieces, least recently used first, each with the source it came through.
        self._kept: OrderedDict[Place, tuple[BlobSource, bytes]] = OrderedDict()
        self._blobs: dict[Digest, set[Place]] = {}  # each blob's kept pieces, every origin's
        self._flights: dict[Digest, list[tuple[Key, _Flight]]] = {}  # each blob's, any origin's
        self.used = 0
        self.fetches = 0
        self.fetched_bytes = 0

    async def read(self, source: BlobSource, digest: Digest, offset: int, length: int) -> bytes:
        """Blob bytes ``[offset, offset + length)`` through ``source``: kept from it, or
        fetched through it as one piece now (with its flight holding the range, if one is out).

        Short only where the blob ends. Raises what the fetch raised.
        """
        found = self._find(digest, offset, length, source)
        if found is not None:
            return found
        key, flight = self._flight(digest, offset, length, source)
        if flight is None:
            key, flight = self._start(source, (digest, offset, length))
        self._demand(+1)
        try:
            await flight.done.wait()
        finally:
            self._demand(-1)
        if flight.data is None:  # failed (the data is the flight's, kept or pushed out again)
            raise flight.error or TemporaryFailure(f"fetch of {digest} brought nothing")
        return _within(key, flight.data, offset, length)

    def prefetch(self, source: BlobSource, digest: Digest, offset: int, length: int) -> int:
        """Start fetching the range as a piece through ``source`` unless it is kept or
        coming from it; 1 when started."""
        if self.holds(digest, offset, length, source):
            return 0
        self._start(source, (digest, offset, length))
        return 1

    def holds(self, digest: Digest, offset: int, length: int, source: BlobSource) -> bool:
        """Whether the range is kept, or coming in a flight, through ``source``."""
        return (
            self._find(digest, offset, length, source) is not None
            or self._flight(digest, offset, length, source)[1] is not None
        )

    async def bring(
        self,
        source: BlobSource,
        digest: Digest,
        offset: int,
        length: int,
        limiter: trio.CapacityLimiter,
    ) -> bool:
        """Fetch the range as a piece through ``source``, under ``limiter`` (a trace replay's
        own), unless it is kept or coming from it, and wait until it is in or failed (logged:
        left to the reads); whether it came. Not a reader: it counts as no demand."""
        if self._find(digest, offset, length, source) is not None:
            return True
        _key, flight = self._flight(digest, offset, length, source)
        if flight is None:
            _key, flight = self._start(source, (digest, offset, length), limiter)
        await flight.done.wait()
        return flight.error is None

    @property
    def in_flight(self) -> int:
        """Pieces being fetched now."""
        return sum(len(flights) for flights in self._flights.values())

    def evict(self, digest: Digest, offset: int, length: int) -> int:
        """Drop the kept pieces of ``digest`` that hold any of the range, every origin's;
        how many."""
        end = offset + length
        gone = [
            place
            for place in self._blobs.get(digest, ())
            if place[1][1] < end and offset < place[1][1] + place[1][2]
        ]
        for place in gone:
            self._drop(place)
        return len(gone)

    def _find(self, digest: Digest, offset: int, length: int, source: BlobSource) -> bytes | None:
        """The range from a piece kept through ``source``."""
        places: Iterable[Place] = self._blobs.get(digest, ())
        exact = (id(source), (digest, offset, length))  # as asked: no scan (a replay's)
        if exact in self._kept:
            places = (exact,)
        for place in places:
            if place[0] == id(source) and _holds(place[1], digest, offset, length):
                self._kept.move_to_end(place)
                return _within(place[1], self._kept[place][1], offset, length)
        return None

    def _flight(
        self, digest: Digest, offset: int, length: int, source: BlobSource
    ) -> tuple[Key, _Flight | None]:
        """A flight holding the range through ``source``."""
        for key, flight in self._flights.get(digest, ()):
            if flight.source is source and _holds(key, digest, offset, length):
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
            self._keep(source, key, data)
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

    def _keep(self, source: BlobSource, key: Key, data: bytes) -> None:
        place = (id(source), key)
        if place in self._kept:
            self._drop(place)
        if not data:
            return  # past the blob's end: nothing to keep
        self._kept[place] = (source, data)
        self._blobs.setdefault(key[0], set()).add(place)
        self.used += ENTRY_COST + len(data)
        while (self.used > self.max_bytes or len(self._kept) > MAX_KEPT) and self._kept:
            self._drop(next(iter(self._kept)))

    def _drop(self, place: Place) -> None:
        self.used -= ENTRY_COST + len(self._kept.pop(place)[1])
        digest = place[1][0]
        places = self._blobs[digest]
        places.discard(place)
        if not places:
            del self._blobs[digest]


def _holds(key: Key, digest: Digest, offset: int, length: int) -> bool:
    """Whether the piece asked as ``key`` covers the range (to the blob's end, if short)."""
    return key[0] == digest and key[1] <= offset and offset + length <= key[1] + key[2]


def _within(key: Key, data: bytes, offset: int, length: int) -> bytes:
    start = offset - key[1]
    return data[start : start + length]
