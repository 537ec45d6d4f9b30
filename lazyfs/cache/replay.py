"""Replaying a learned prefetch trace: its ranges fetched in order, yielding to reads.

A mount that has the trace of its image and command (``lazyfs.index.trace``)
sends its ranges as ``Prefetch`` requests with ``replay`` set, in trace
order, one blob's run of ranges per request. ``Replays.add`` answers at
once and queues the chunks those ranges need, or, for a request marked
``piece`` (the parts of the chunks the trace covers only in part:
``lazyfs.cache.partial``), each range as a piece (``lazyfs.cache.pieces``),
in a queue of their source's
(the registry repository they come from); one task works through the
queues, a run from each in turn, each queue in the order its runs came.
A trace is as trustworthy as whoever may push to its image's repository:
one that names far too much fills its repository's queue only, and the
replays of other repositories' images still go out, in turn with it.

How it yields to on-demand reads, the daemon's other priority besides
background fetch (``lazyfs.cache.background``), with the Fetcher's own
accounting (``Fetcher.demand_waiting``, ``Fetcher.quiet``):

- its requests run under a limiter of their own (``REQUESTS`` at once),
  never taking a reader's place upstream;
- a chunk is registered as in flight only when its request goes out, so a
  reader never waits on a chunk that sits in this queue: it fetches it itself;
- while any reader waits on a fetch, no new replay request goes out unless
  none is out: the replay keeps moving (a trace is worth most while the
  container starts, which is exactly when reads wait) but takes one request's
  share of the link, not ``REQUESTS``;
- requests are small (``REQUEST_CHUNKS`` chunks), so a read that comes
  while some are out shares the link with them only briefly.

Unlike background fetch it does not wait for the link to settle: replayed
chunks are the ones the starting container is about to read.

Chunks cached or in flight are skipped when their turn comes, and so is
a piece kept or coming, or whose chunks are. A piece takes its turn as a
chunk run does, and counts as one of the ``REQUESTS`` out. Each queue
is bounded (``MAX_QUEUED``): what does not fit is dropped with a logged
line, a trace being only a hint. Fetch failures are logged by the Fetcher and leave
the chunks to on-demand reads. Nothing here decides what bytes are served:
chunks land in the cache as any fetch's and are verified by whoever reads
them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from lazyfs.cache.flight import Fetcher
from lazyfs.cache.layout import ChunkKey
from lazyfs.cache.pieces import MAX_PIECE, Pieces
from lazyfs.cache.planner import wanted_chunks
from providers.digest import Digest
from providers.source import BlobSource

log = logging.getLogger(__name__)

# Measured (the Debian cold start replaying a trace through a published index,
# 100 Mbit/s, 20 ms): 8 at once cut the replay's time to the program's line by
# a fifth against 4; 16 did no better.  Requests are small and scattered: the
# link waits on round trips, not bytes.
REQUESTS = 8
REQUEST_CHUNKS = 8  # as the Fetcher cuts a read's requests
MAX_QUEUED = 1 << 16  # runs waiting, a source's: 32 GiB of 64 KiB chunks, past any trace
# The chunks one replay request may name (1 GiB of 64 KiB chunks): the request
# is weighed on the daemon's loop, which every mount's reads wait on.
ADD_CHUNKS = 1 << 14


@dataclass(frozen=True)
class _Run:
    source: BlobSource
    digest: Digest
    chunks: tuple[int, ...]  # adjacent, ascending
    piece: tuple[int, int] | None = None  # (offset, length) fetched as it is, inside ``chunks``


class Replays:
    """The daemon's trace replays over ``fetcher`` (``pieces``: ranges asked as pieces), run
    in ``nursery``."""

    def __init__(self, fetcher: Fetcher, nursery: trio.Nursery, pieces: Pieces | None = None):
        self.fetcher = fetcher
        self.pieces = pieces
        self._nursery = nursery
        # A queue per source (by identity: the daemon resolves one per origin),
        # in the order they are served in turn; none is kept empty.
        self._queues: OrderedDict[int, deque[_Run]] = OrderedDict()
        self._running = False  # whether ``_run`` is working through the queues
        self._limiter = trio.CapacityLimiter(REQUESTS)
        self._out = 0  # replay requests out now
        self._landed = trio.Event()  # set whenever one comes back
        self.chunks_replayed = 0
        self.pieces_replayed = 0

    def add(
        self,
        source: BlobSource,
        digest: Digest,
        ranges: Iterable[tuple[int, int]],
        blob_size: int | None,
        *,
        piece: bool = False,
    ) -> int:
        """Queue the chunks of ``ranges`` (offset, length) in their order, or with ``piece``
        each range as one piece (``lazyfs.cache.pieces``); returns how many chunks or
        pieces are neither cached nor coming now. No await: answered at once."""
        if piece and self.pieces is not None:
            queued = self._queue_pieces(source, digest, ranges, blob_size)
        else:
            queued = self._queue(source, digest, ranges, blob_size)
        # Also when the rest was dropped: what was queued goes out.
        if self._queues and not self._running:
            self._running = True
            self._nursery.start_soon(self._run)
        return queued

    def _queue(
        self,
        source: BlobSource,
        digest: Digest,
        ranges: Iterable[tuple[int, int]],
        blob_size: int | None,
    ) -> int:
        size = blob_size if blob_size is not None else self.fetcher.cache.blob_size(digest)
        queued = 0
        seen: set[int] = set()
        for offset, length in ranges:
            chunks = [
                i
                for i in wanted_chunks([(offset, length)], self.fetcher.chunk_size, size)
                if i not in seen and not self._in_hand(digest, i)
            ]
            seen.update(chunks)
            if len(seen) > ADD_CHUNKS:
                log.warning("trace replay of %s names too much: the rest is dropped", digest)
                return queued
            for run in _runs(chunks, REQUEST_CHUNKS):
                if not self._enqueue(_Run(source, digest, run)):
                    return queued
                queued += len(run)
        return queued

    def _enqueue(self, run: _Run) -> bool:
        """Put ``run`` at the end of its source's queue; False (logged) when that is full."""
        queue = self._queues.setdefault(id(run.source), deque())
        if len(queue) >= MAX_QUEUED:
            log.warning("trace replay queue full: dropping the rest of %s's", run.digest)
            return False
        queue.append(run)
        return True

    def _queue_pieces(
        self,
        source: BlobSource,
        digest: Digest,
        ranges: Iterable[tuple[int, int]],
        blob_size: int | None,
    ) -> int:
        size = blob_size if blob_size is not None else self.fetcher.cache.blob_size(digest)
        queued = 0
        long: list[tuple[int, int]] = []  # a piece is short: these are chunks' work
        for offset, length in ranges:
            if size is not None:
                length = min(length, size - offset)
            if length <= 0:
                continue
            if length > MAX_PIECE:
                long.append((offset, length))
                continue
            chunks = tuple(wanted_chunks([(offset, length)], self.fetcher.chunk_size, size))
            run = _Run(source, digest, chunks, (offset, length))
            if self._held(run):
                continue
            if not self._enqueue(run):
                return queued
            queued += 1
        return queued + (self._queue(source, digest, long, size) if long else 0)

    def _held(self, run: _Run) -> bool:
        """Whether a piece run's bytes are kept or coming, as a piece or as chunks."""
        assert run.piece is not None and self.pieces is not None
        return self.pieces.holds(run.digest, *run.piece, run.source) or all(
            self._in_hand(run.digest, i) for i in run.chunks
        )

    def _in_hand(self, digest: Digest, index: int) -> bool:
        key = ChunkKey(digest, index)
        return self.fetcher.in_flight(key) or self.fetcher.cache.contains(key)

    async def _run(self) -> None:
        """Work through the queues until they are empty; requests are tasks of the daemon's
        nursery. A task only while there is work: an idle daemon has none (``idle``)."""
        try:
            while self._queues:
                run = self._next()
                await self._turn()
                # Checked when it goes out, not when queued: a reader may have fetched it.
                if run.piece is not None:
                    if not self._held(run):
                        self._out += 1
                        self._nursery.start_soon(self._bring, run)
                    continue
                chunks = [i for i in run.chunks if not self._in_hand(run.digest, i)]
                for part in _runs(chunks, REQUEST_CHUNKS):
                    self._out += 1
                    self._nursery.start_soon(self._fetch, run.source, run.digest, list(part))
        finally:
            self._running = False  # no await since the queues were seen empty: none is lost

    def _next(self) -> _Run:
        """The first run of the queue whose turn it is; that queue goes last."""
        key, queue = next(iter(self._queues.items()))
        run = queue.popleft()
        if queue:
            self._queues.move_to_end(key)
        else:
            del self._queues[key]
        return run

    async def _turn(self) -> None:
        """Return when a replay request may go out (see the module docstring)."""
        while True:
            if self._out < REQUESTS and not (self.fetcher.demand_waiting and self._out):
                return
            self._landed = trio.Event()
            async with trio.open_nursery() as race:
                if self._out < REQUESTS:
                    race.start_soon(self._then_cancel, self.fetcher.quiet, race.cancel_scope)
                race.start_soon(self._then_cancel, self._landed.wait, race.cancel_scope)

    @staticmethod
    async def _then_cancel(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
        await wait()
        scope.cancel()

    async def _fetch(self, source: BlobSource, digest: Digest, chunks: list[int]) -> None:
        """One replay request; never raises (the Fetcher logged a failure)."""
        try:
            await self.fetcher.fetch_chunks(source, digest, chunks, self._limiter)
            self.chunks_replayed += len(chunks)
        except Exception:  # whatever the source raised: it must not end the daemon
            pass  # logged by the Fetcher; the chunks are left to the reads that need them
        finally:
            self._out -= 1
            self._landed.set()

    async def _bring(self, run: _Run) -> None:
        """One replayed piece; never raises (Pieces logged a failure)."""
        assert run.piece is not None and self.pieces is not None
        try:
            if await self.pieces.bring(run.source, run.digest, *run.piece, self._limiter):
                self.pieces_replayed += 1
        finally:
            self._out -= 1
            self._landed.set()


def _runs(chunks: Iterable[int], limit: int) -> list[tuple[int, ...]]:
    """``chunks`` cut into runs of adjacent ascending indices, at most ``limit`` long."""
    runs: list[list[int]] = []
    for index in chunks:
        if runs and runs[-1][-1] + 1 == index and len(runs[-1]) < limit:
            runs[-1].append(index)
        else:
            runs.append([index])
    return [tuple(run) for run in runs]
