"""Fetching missing chunks into the disk cache: one fetch per chunk however many readers wait.

``Fetcher`` is the daemon's coordinator, for trio. A read plans its requests
(``lazyfs.cache.planner``) against what is cached or already in flight,
starts a task per request, and waits for its chunks. Each missing chunk has
one flight: every reader of it waits on that flight, so twenty mounts reading
one range make one upstream request.

The fetch tasks belong to the Fetcher's nursery, not to any reader: a reader
cancelled while it waits stops waiting and nothing else, the fetch goes on for
the others and lands in the cache. A fetch that fails wakes every waiter of the chunks it
did not bring: those reading through its origin raise its error, the others fetch them
through theirs. It leaves nothing behind, and failures are not remembered.

Chunks go in the cache as they come in, while the rest of the answer is on its way
(``lazyfs.cache.arrival``), side by side (each write ends in an fsync, and the
filesystem commits concurrent ones together), each waking its waiters once in place
(``lazyfs.cache.landing``); a reader's chunks are pinned from before its wait until
its answer is built. A source's bytes are trusted: the mount checks them, and reads
what it finds wrong again through its origin alone (``Read.own``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TypeVar

import trio

from lazyfs.cache.arrival import arrive
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.landing import Flight, InHand, land
from lazyfs.cache.layout import ChunkKey
from lazyfs.cache.planner import Fetch, Readahead, advance, plan, wanted_chunks
from lazyfs.cache.values import Extent
from lazyfs.cache.workers import Workers
from providers.digest import Digest
from providers.errors import TemporaryFailure
from providers.source import BlobSource

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_UPSTREAM_REQUESTS = 8
# Chunk writes (each ends in an fsync) at once: a 64 MiB prefetch is a
# thousand of them, which on trio's default limiter would take all its threads.
DEFAULT_CHUNK_WRITES = 8
# Readers of one blob: enough to keep a detector per layer of many images.
_READAHEAD_STATES = 4096


class Fetcher:
    """Single-flight chunk fetches into ``cache``, run as tasks of ``nursery``.

    ``limiter`` bounds the upstream requests running at once (they block in
    worker threads: ``upstream``'s, whose connections stay open, else trio's),
    ``writes`` the chunk writes of all their answers.
    """

    def __init__(
        self,
        cache: DiskCache,
        nursery: trio.Nursery,
        *,
        limiter: trio.CapacityLimiter | None = None,
        writes: trio.CapacityLimiter | None = None,
        max_request_chunks: int = 8,
        readahead: tuple[int, int] = (2, 16),
        upstream: Workers | None = None,
    ) -> None:
        self.cache = cache
        self.chunk_size = cache.layout.chunk_size
        self._nursery = nursery
        self._limiter = limiter or trio.CapacityLimiter(DEFAULT_UPSTREAM_REQUESTS)
        self.chunk_writes = writes or trio.CapacityLimiter(DEFAULT_CHUNK_WRITES)
        self._max_request_chunks = max_request_chunks
        self._readahead_bounds = readahead
        self._upstream = upstream
        self._flights: dict[ChunkKey, Flight] = {}
        self._sizes: dict[Digest, int] = {}
        self._readahead: OrderedDict[Digest, Readahead] = OrderedDict()
        self.fetches_in_flight = 0
        self.fetches_started = 0
        self.fetched_bytes = 0
        self.waits = 0  # times a reader waited on a fetch: the misses
        self.demand_waiting = 0  # readers waiting on a flight now: background work pauses
        self._quiet = trio.Event()
        self._quiet.set()
        self.last_demand: float | None = None  # when a reader last waited (trio's clock)

    async def read_extents(
        self,
        source: BlobSource,
        digest: Digest,
        offset: int,
        length: int,
        blob_size: int | None = None,
        *,
        readahead: bool = True,
    ) -> list[Extent]:
        """Where blob bytes [offset, offset + length) are in the cache, fetching what is missing.

        The extents are in blob order and contiguous from ``offset``; they
        add up to ``length`` less only where the blob ends. Raises what the
        source raised (NotFound, TemporaryFailure, ...) when a needed fetch
        failed. ``readahead``: whether a sequential run of reads fetches
        ahead of them (not for a reader that asks exactly what it needs).
        """
        return await self._answer(
            source, digest, offset, length, blob_size, lambda e: e, readahead=readahead
        )

    async def read(
        self,
        source: BlobSource,
        digest: Digest,
        offset: int,
        length: int,
        blob_size: int | None = None,
    ) -> bytes:
        """The bytes ``read_extents`` points at, read from the cache files while still pinned."""

        def gather(extents: list[Extent]) -> bytes:
            parts = []
            for extent in extents:
                key = ChunkKey(digest, extent.blob_offset // self.chunk_size)
                data = self.cache.files.read_chunk(key, extent.file_offset, extent.length)
                if data is None or len(data) != extent.length:
                    raise TemporaryFailure(f"chunk {key.index} of {digest} vanished while pinned")
                parts.append(data)
            return b"".join(parts)

        return await self._answer(source, digest, offset, length, blob_size, gather)

    async def _answer(
        self,
        source: BlobSource,
        digest: Digest,
        offset: int,
        length: int,
        blob_size: int | None,
        build: Callable[[list[Extent]], T],
        *,
        readahead: bool = True,
    ) -> T:
        """``build`` of the range's extents, called while its chunks are pinned."""
        if blob_size is not None:
            self._sizes[digest] = blob_size
        # Rounds: a chunk is missing after its wait if the blob ends before it (the next round
        # knows), or another origin's fetch failed; more mean a pinned chunk went.
        theirs: BaseException | None = None  # another origin's failure, if rounds run out
        for _ in range(3):
            # The request's size, not what another image's short answer recorded meanwhile.
            size = self._size(digest) if blob_size is None else blob_size
            indices = wanted_chunks([(offset, length)], self.chunk_size, size)
            keys = [ChunkKey(digest, i) for i in indices]
            # Pins and lookups take the cache's mutex from the trio thread:
            # held by others only for a rename or an eviction, never an fsync.
            with self.cache.pinned(keys):
                ahead = self._readahead_for(digest, indices) if readahead else []
                self._start(source, digest, indices, ahead)
                waits = [f for key in keys if (f := self._flights.get(key)) is not None]
                if waits:
                    self.demand(+1)
                    try:
                        theirs = await self._wait(waits, source) or theirs
                    finally:
                        self.demand(-1)
                extents = self._extents(digest, offset, length, indices, size)
                if extents is not None:
                    return build(extents)
        raise theirs or TemporaryFailure(f"chunks of {digest} vanished from the cache while read")

    def prefetch(
        self,
        source: BlobSource,
        digest: Digest,
        ranges: Iterable[tuple[int, int]],
        blob_size: int | None = None,
        *,
        max_request_chunks: int | None = None,
    ) -> int:
        """Start fetching the chunks of ``ranges`` not cached or in flight; returns how many.

        Does not wait: the fetches run in the background, failures only
        clear their flights. Adjacent missing chunks go out in requests of
        up to ``max_request_chunks`` (default: as reads do).
        """
        if blob_size is not None:
            self._sizes[digest] = blob_size
        indices = wanted_chunks(ranges, self.chunk_size, self._size(digest))
        return self._start(source, digest, [], indices, max_request_chunks)

    async def fetch_chunks(
        self,
        source: BlobSource,
        digest: Digest,
        indices: list[int],
        limiter: trio.CapacityLimiter,
    ) -> None:
        """Fetch the chunks ``indices`` not cached yet, under ``limiter``, and wait for them all.

        For background work: the requests count against ``limiter``, not the
        readers' one, so that reads always find room upstream. Raises what a
        fetch raised.
        """
        self._start(source, digest, [], indices, limiter=limiter)
        waits = [f for i in indices if (f := self._flights.get(ChunkKey(digest, i))) is not None]
        await self._wait(waits, source)  # another origin's failure: background goes round again

    async def quiet(self, settle: float = 0.0) -> None:
        """Return once no reader waits on a fetch, and none has for ``settle`` seconds."""
        while True:
            while self.demand_waiting:
                await self._quiet.wait()
            if self.last_demand is None:
                return
            left = self.last_demand + settle - trio.current_time()
            if left <= 0:
                return
            await trio.sleep(left)

    def in_flight(self, key: ChunkKey) -> bool:
        return key in self._flights

    def evict(self, digest: Digest, offset: int, length: int) -> int:
        """Drop the cached chunks holding blob bytes [offset, offset + length); returns how many.

        A chunk being fetched is left to land: it is new bytes, not the ones
        found wrong.
        """
        dropped = 0
        for index in wanted_chunks([(offset, length)], self.chunk_size):
            key = ChunkKey(digest, index)
            if key not in self._flights and self.cache.drop(key):
                dropped += 1
        return dropped

    def note_demand(self) -> None:
        """Count now as a reader's wait: ``quiet(settle)`` waits ``settle`` from here."""
        self.last_demand = trio.current_time()

    def demand(self, change: int) -> None:  # readers waiting on a fetch, a chunk's or a piece's
        self.waits += change > 0
        self.demand_waiting += change
        self.last_demand = trio.current_time()
        if self.demand_waiting:
            if self._quiet.is_set():
                self._quiet = trio.Event()
        else:
            self._quiet.set()

    def _size(self, digest: Digest) -> int | None:
        """The blob's size, when a request, a short answer or a short chunk told it."""
        size = self._sizes.get(digest)
        return self.cache.blob_size(digest) if size is None else size

    # Planning and starting. No await from here to the flights' registration:
    # a task planning the same chunks meanwhile would fetch them twice.

    def _readahead_for(self, digest: Digest, indices: list[int]) -> list[int]:
        if not indices:
            return []
        state, ahead = advance(
            self._readahead.get(digest),
            indices[0],
            indices[-1],
            min_window=self._readahead_bounds[0],
            max_window=self._readahead_bounds[1],
        )
        if state is not None:
            self._readahead[digest] = state
            self._readahead.move_to_end(digest)
            if len(self._readahead) > _READAHEAD_STATES:
                self._readahead.popitem(last=False)
        return list(ahead)

    def _start(
        self,
        source: BlobSource,
        digest: Digest,
        wanted: list[int],
        ahead: list[int],
        max_request_chunks: int | None = None,
        *,
        limiter: trio.CapacityLimiter | None = None,
    ) -> int:
        """Start the fetches ``wanted`` and ``ahead`` need; returns how many chunks they fetch."""
        have = InHand(digest, self._flights, self.cache)
        size = self._size(digest)
        last_chunk = None if size is None else (size - 1) // self.chunk_size
        fetches = plan(
            wanted,
            have,
            ahead=ahead,
            max_request_chunks=max_request_chunks or self._max_request_chunks,
            last_chunk=last_chunk,
        )
        for fetch in fetches:
            flights = {ChunkKey(digest, i): Flight(source) for i in fetch.chunks}
            self._flights.update(flights)
            self.fetches_in_flight += 1
            self.fetches_started += 1
            self._nursery.start_soon(
                self._fetch, source, digest, fetch, flights, limiter or self._limiter
            )
        return sum(fetch.count for fetch in fetches)

    async def _wait(self, waits: list[Flight], source: BlobSource) -> BaseException | None:
        """Raise a failed fetch's error if it went through ``source``; another origin's (one
        of two repositories) is returned: the next round fetches the chunk ours."""
        theirs = None
        for flight in waits:
            await flight.done.wait()
            if flight.error is not None and flight.source is source:
                raise flight.error
            theirs = flight.error or theirs
        return theirs

    def _extents(
        self, digest: Digest, offset: int, length: int, indices: list[int], size: int | None
    ) -> list[Extent] | None:
        """The answer from the cache's accounting, or None when a chunk needed is missing
        (one the blob, ``size`` long if known, has)."""
        extents = []
        end = offset + length
        for index in indices:
            base = index * self.chunk_size
            chunk_length = self.cache.length(ChunkKey(digest, index))
            if chunk_length is None:
                if size is not None and base >= size:
                    break  # the blob ends before this chunk
                return None
            lo, hi = max(offset - base, 0), min(end - base, chunk_length)
            if hi > lo:
                path = self.cache.layout.chunk_path(ChunkKey(digest, index))
                extents.append(Extent(str(path), lo, base + lo, hi - lo))
            self.cache.touch(ChunkKey(digest, index))
            if chunk_length < self.chunk_size:
                break
        return extents

    # Fetching

    async def _fetch(
        self,
        source: BlobSource,
        digest: Digest,
        fetch: Fetch,
        flights: dict[ChunkKey, Flight],
        limiter: trio.CapacityLimiter,
    ) -> None:
        """Run one request; never raises (that would cancel every other fetch). Each chunk
        goes in the cache as it comes (``arrival``), and its readers wake then."""
        offset, length = fetch.span(self.chunk_size)
        error: BaseException | None = None
        failures: list[Exception] = []

        async def put(index: int, piece: bytes) -> None:
            await self._put(ChunkKey(digest, index), piece, flights, failures)

        run = trio.to_thread.run_sync if self._upstream is None else self._upstream.run_sync
        try:
            got = await arrive(run, limiter, source, digest, offset, length, self.chunk_size, put)
            if got < length:
                self._sizes[digest] = offset + got
            if failures:
                raise failures[0]
        except Exception as failure:
            # Logged here once: read-ahead has no waiter to report it.
            log.warning("fetch of %s bytes %d+%d failed: %s", digest, offset, length, failure)
            error = failure
        except BaseException:
            # Cancelled: the daemon is shutting down. Waiters get an error they can report.
            error = TemporaryFailure(f"fetch of {digest} stopped: the cache daemon is stopping")
            raise
        finally:
            for key in list(flights):
                land(self._flights, key, flights, error)
            self.fetches_in_flight -= 1

    async def _put(
        self,
        key: ChunkKey,
        piece: bytes,
        flights: dict[ChunkKey, Flight],
        failures: list[Exception],
    ) -> None:
        """Cache one chunk of an answer and wake its readers; a failure goes to ``failures``."""
        self.fetched_bytes += len(piece)
        try:
            if piece:
                await trio.to_thread.run_sync(self.cache.put, key, piece, limiter=self.chunk_writes)
        except Exception as failure:
            failures.append(failure)  # its flight lands with the fetch's error
            return
        land(self._flights, key, flights, None)
