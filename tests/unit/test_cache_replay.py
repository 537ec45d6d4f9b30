"""A trace replayed by the daemon: in trace order, skipping what is in hand, yielding to reads.

In process, with trio and a blob source over bytes in memory that records
its calls and holds them at a gate: what went upstream, and in which order
it was let out, is read from it.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
import trio
import trio.testing

from lazyfs.cache import replay
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.daemon import Server
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.layout import ChunkKey
from lazyfs.cache.messages import decode_request, encode_request
from lazyfs.cache.pieces import Pieces
from lazyfs.cache.replay import REQUEST_CHUNKS, REQUESTS, Replays
from lazyfs.cache.values import BlobRange, HandleOrigin, Prefetch, PrefetchOk
from providers.digest import Digest

SIZE = 64  # bytes a chunk
BLOB = os.urandom(SIZE * 200)
DIGEST = Digest("sha256:" + "5a" * 32)


class Source:
    """BLOB by range; records each call; gated, every call waits for ``gate``."""

    def __init__(self, *, gated: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(BLOB)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        with self.lock:
            self.calls.append((offset, length))
        assert self.gate.wait(timeout=30), "the gate was never opened"
        return BLOB[offset : offset + length]


@asynccontextmanager
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Fetcher, Replays]]:
    root = tmp_path / "cache"
    root.mkdir()
    limit = 4 * len(BLOB) * os.statvfs(root).f_frsize // SIZE
    with DiskCache.open(root, limit, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            fetcher = Fetcher(cache, nursery, readahead=(0, 0))
            # A readers' limiter for the pieces, as the daemon's: replayed ones take the replay's.
            pieces = Pieces(nursery, trio.CapacityLimiter(1), trio.to_thread.run_sync)
            yield fetcher, Replays(fetcher, nursery, pieces)
            nursery.cancel_scope.cancel()  # the replay task waits for work for ever


def in_flight(fetcher: Fetcher, index: int) -> bool:
    return fetcher.in_flight(ChunkKey(DIGEST, index))


def chunk(index: int) -> tuple[int, int]:
    return index * SIZE, SIZE


async def test_replayed_ranges_go_out_in_trace_order_a_few_at_a_time(tmp_path: Path) -> None:
    source = Source(gated=True)
    async with daemon(tmp_path) as (fetcher, replays):
        # Apart, so that each is a request of its own; the trace's order is not the blob's.
        order = [150, 3, 90, 40, 120, 7, 60, 180, 25, 100, 70, 130]
        assert len(order) > REQUESTS
        queued = replays.add(source, DIGEST, [chunk(i) for i in order], len(BLOB))
        assert queued == len(order)
        await trio.testing.wait_all_tasks_blocked()
        assert fetcher.fetches_in_flight == REQUESTS
        left = len(order) - REQUESTS
        assert [in_flight(fetcher, i) for i in order] == [True] * REQUESTS + [False] * left
        source.gate.set()
        while replays.chunks_replayed < len(order):
            await trio.sleep(0)  # a checkpoint, not a delay: the fetches land meanwhile
        assert sorted(source.calls) == sorted(chunk(i) for i in order)  # each once
        data = await fetcher.read(source, DIGEST, 150 * SIZE, SIZE, len(BLOB))
        assert data == BLOB[150 * SIZE : 151 * SIZE]
        assert len(source.calls) == len(order)  # a hit: the replay brought it


async def test_while_a_reader_waits_one_replay_request_is_out_at_most(tmp_path: Path) -> None:
    source = Source(gated=True)
    async with daemon(tmp_path) as (fetcher, replays):
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await fetcher.read(source, DIGEST, 100 * SIZE, 10, len(BLOB)))

        async with trio.open_nursery() as readers:
            readers.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert fetcher.demand_waiting == 1
            replays.add(source, DIGEST, [chunk(i) for i in (10, 20, 30, 40)], len(BLOB))
            await trio.testing.wait_all_tasks_blocked()
            # The reader's request and one replay request: the replay moves, the reader
            # keeps the link but for that one.
            assert fetcher.fetches_in_flight == 2
            assert [in_flight(fetcher, i) for i in (100, 10, 20)] == [True, True, False]
            source.gate.set()
        assert got == [BLOB[100 * SIZE : 100 * SIZE + 10]]
        while replays.chunks_replayed < 4:
            await trio.sleep(0)  # a checkpoint, not a delay
        assert sorted(source.calls) == sorted(chunk(i) for i in (100, 10, 20, 30, 40))


async def test_chunks_in_hand_are_not_replayed_and_runs_are_bounded(tmp_path: Path) -> None:
    source = Source()
    async with daemon(tmp_path) as (fetcher, replays):
        await fetcher.read(source, DIGEST, 0, 4 * SIZE, len(BLOB))
        source.calls.clear()
        # Chunks 0-3 are cached; 4 to 4 + 2 * REQUEST_CHUNKS are not, and come in full runs.
        end = (4 + 2 * REQUEST_CHUNKS) * SIZE
        assert replays.add(source, DIGEST, [(0, end), (SIZE, 10)], len(BLOB)) == 2 * REQUEST_CHUNKS
        while replays.chunks_replayed < 2 * REQUEST_CHUNKS:
            await trio.sleep(0)  # a checkpoint, not a delay
        run = REQUEST_CHUNKS * SIZE
        assert sorted(source.calls) == [(4 * SIZE, run), (4 * SIZE + run, run)]
        # Past the blob's end: nothing to fetch.
        assert replays.add(source, DIGEST, [(len(BLOB), 100)], len(BLOB)) == 0


async def test_the_daemon_replays_a_prefetch_marked_as_a_replay(tmp_path: Path) -> None:
    source = Source()
    request = Prefetch(7, (BlobRange(DIGEST, 5 * SIZE, 2 * SIZE),), HandleOrigin("src"), None, True)
    assert decode_request(encode_request(request)) == request
    async with daemon(tmp_path) as (fetcher, replays):
        server = Server(fetcher.cache, fetcher, lambda origin: source, None, replays)
        answer = await server.answer(request)
        assert answer == PrefetchOk(7, 2)
        while replays.chunks_replayed < 2:
            await trio.sleep(0)  # a checkpoint, not a delay
        assert source.calls == [(5 * SIZE, 2 * SIZE)]


async def test_a_trace_repeating_a_range_is_weighed_once_and_a_huge_one_is_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A published trace is somebody else's: one request naming the same range
    # thousands of times, or more chunks than a replay may take, must cost the
    # daemon's loop (which every mount's reads wait on) a bounded amount.
    source = Source(gated=True)
    same = tuple(BlobRange(DIGEST, 5 * SIZE, 2 * SIZE) for _ in range(3000))
    async with daemon(tmp_path) as (fetcher, replays):
        server = Server(fetcher.cache, fetcher, lambda origin: source, None, replays)
        answer = await server.answer(Prefetch(8, same, HandleOrigin("src"), len(BLOB), True))
        assert answer == PrefetchOk(8, 2)
        monkeypatch.setattr(replay, "ADD_CHUNKS", 20)
        apart = [chunk(i) for i in range(20, 200, 2)]
        assert replays.add(source, DIGEST, apart, len(BLOB)) <= 20
        source.gate.set()


async def test_a_trace_filling_its_repositorys_queue_leaves_other_replays_their_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A published trace is as trustworthy as whoever may push to its image's
    # repository: one naming far too much must not drop, nor hold back behind
    # it, the replays of another repository's images.
    monkeypatch.setattr(replay, "MAX_QUEUED", 8)
    monkeypatch.setattr(replay, "REQUESTS", 1)  # one at a time: the order is the turns'
    hostile, other = Source(gated=True), Source(gated=True)
    other.calls, other.lock, other.gate = hostile.calls, hostile.lock, hostile.gate  # one log
    async with daemon(tmp_path) as (fetcher, replays):
        many = [chunk(i) for i in range(0, 200, 2)]
        replays.add(hostile, DIGEST, many, len(BLOB))
        await trio.testing.wait_all_tasks_blocked()
        assert fetcher.fetches_in_flight == 1
        assert replays.add(hostile, DIGEST, many, len(BLOB)) < len(many)  # full again
        wanted = chunk(1)
        assert replays.add(other, DIGEST, [wanted], len(BLOB)) == 1
        hostile.gate.set()
        with trio.fail_after(30):  # bounds a failing test only
            while wanted not in hostile.calls:
                await trio.sleep(0)  # a checkpoint, not a delay
        # Out, then taken before it was added, then the hostile queue's turn, then its own.
        assert hostile.calls.index(wanted) == 3, hostile.calls


async def test_pieces_are_replayed_in_their_turn_as_requests_of_the_replay(
    tmp_path: Path,
) -> None:
    # The parts of a trace's partial chunks (``lazyfs.cache.partial``): fetched as they
    # are, in the queue's order with the chunks, each one of the replay's requests.
    source = Source()
    async with daemon(tmp_path) as (fetcher, replays):
        assert replays.pieces is not None
        await fetcher.read(source, DIGEST, 50 * SIZE, 1, len(BLOB))  # chunk 50 in hand
        source.calls.clear()
        source.gate.clear()
        parts = [(i * SIZE + 5, 20) for i in range(10, 10 + REQUESTS + 2)]
        assert replays.add(source, DIGEST, parts, len(BLOB), piece=True) == len(parts)
        assert replays.add(source, DIGEST, [chunk(3)], len(BLOB)) == 1
        assert replays.add(source, DIGEST, [(50 * SIZE + 5, 20)], len(BLOB), piece=True) == 0
        await trio.testing.wait_all_tasks_blocked()
        # As many out as the replay's requests, never the reads' limiter's one.
        assert replays.pieces.in_flight == REQUESTS and fetcher.fetches_in_flight == 0
        held = [replays.pieces.holds(DIGEST, *part, source) for part in parts]  # coming: in order
        assert held == [True] * REQUESTS + [False] * 2
        with trio.fail_after(30):  # bounds a failing test only
            # Upstream at once, under the replay's limiter (the readers' one takes one).
            while len(source.calls) < REQUESTS:
                await trio.sleep(0)  # a checkpoint, not a delay: the threads call meanwhile
            source.gate.set()
            while replays.chunks_replayed < 1 or replays.pieces_replayed < len(parts):
                await trio.sleep(0)  # a checkpoint, not a delay
        assert sorted(source.calls) == sorted([*parts, chunk(3)])  # each once, exactly
        assert all(replays.pieces.holds(DIGEST, *part, source) for part in parts)
