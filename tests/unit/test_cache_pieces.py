"""Pieces: a small range fetched alone, once, kept for the reads of it; and the daemon's use."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from lazyfs.cache import pieces as pieces_module
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.client import CacheClient, RemoteBlob, status
from lazyfs.cache.daemon import serve
from lazyfs.cache.pieces import ENTRY_COST, MAX_PIECE, Pieces
from lazyfs.cache.values import HandleOrigin
from lazyfs.cache.workers import Workers
from providers.digest import Digest
from providers.errors import NotFound, TemporaryFailure
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource


class TwoBlobs(FakeSource):
    """FakeSource serving DATA for any blob, recording which."""

    def __init__(self) -> None:
        super().__init__()
        self.digests: list[Digest] = []

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.digests.append(digest)
        return super().read_range(BLOB, offset, length)


@asynccontextmanager
async def pieces(max_bytes: int = 1 << 20) -> AsyncIterator[Pieces]:
    async with trio.open_nursery() as nursery:
        yield Pieces(nursery, trio.CapacityLimiter(4), trio.to_thread.run_sync, max_bytes=max_bytes)


async def test_a_piece_is_fetched_alone_once_for_all_its_readers() -> None:
    source = FakeSource(gated=True)
    got: list[bytes] = []
    async with pieces() as p:

        async def reader(offset: int, length: int) -> None:
            got.append(await p.read(source, BLOB, offset, length))

        async with trio.open_nursery() as readers:
            readers.start_soon(reader, 100, 30)
            await trio.testing.wait_all_tasks_blocked()
            readers.start_soon(reader, 100, 30)
            readers.start_soon(reader, 110, 5)  # inside the piece coming
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
        assert sorted(got) == sorted([DATA[100:130], DATA[100:130], DATA[110:115]])
        assert await p.read(source, BLOB, 120, 10) == DATA[120:130]  # kept
    assert source.calls == [(100, 30)]  # the range asked, not the chunks around it
    assert (p.fetches, p.fetched_bytes) == (1, 30)


async def test_a_prefetched_piece_serves_the_read_that_follows() -> None:
    source = FakeSource()
    async with pieces() as p:
        assert p.prefetch(source, BLOB, 40, 20) == 1
        assert p.prefetch(source, BLOB, 45, 5) == 0  # coming already
        assert await p.read(source, BLOB, 40, 20) == DATA[40:60]
        assert p.prefetch(source, BLOB, 40, 20) == 0  # kept
    assert source.calls == [(40, 20)]


async def test_a_range_a_piece_does_not_hold_is_a_piece_of_its_own() -> None:
    source = FakeSource()
    async with pieces() as p:
        await p.read(source, BLOB, 0, 10)
        assert await p.read(source, BLOB, 5, 10) == DATA[5:15]
    assert source.calls == [(0, 10), (5, 10)]


async def test_the_least_recently_used_go_past_the_budget() -> None:
    source = FakeSource()
    async with pieces(max_bytes=2 * (ENTRY_COST + 10) + 5) as p:
        await p.read(source, BLOB, 0, 10)
        await p.read(source, BLOB, 100, 10)
        await p.read(source, BLOB, 0, 10)  # used again: 100 is the oldest now
        await p.read(source, BLOB, 200, 10)
        assert p.used == 2 * (ENTRY_COST + 10)
        await p.read(source, BLOB, 0, 10)
        await p.read(source, BLOB, 100, 10)
    assert source.calls == [(0, 10), (100, 10), (200, 10), (100, 10)]


async def test_evict_drops_the_pieces_holding_the_range() -> None:
    source = FakeSource()
    async with pieces() as p:
        await p.read(source, BLOB, 0, 10)
        await p.read(source, BLOB, 50, 10)
        assert p.evict(BLOB, 55, 1) == 1
        assert p.used == ENTRY_COST + 10
        await p.read(source, BLOB, 50, 10)
    assert source.calls == [(0, 10), (50, 10), (50, 10)]


async def test_a_failed_fetch_fails_its_readers_and_leaves_nothing() -> None:
    failure = TemporaryFailure("registry answered 503")
    source = FakeSource(gated=True, failures=[failure])
    errors: list[BaseException] = []
    async with pieces() as p:

        async def reader() -> None:
            try:
                await p.read(source, BLOB, 0, 8)
            except TemporaryFailure as error:
                errors.append(error)

        async with trio.open_nursery() as readers:
            readers.start_soon(reader)
            readers.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
        assert errors == [failure, failure]
        assert await p.read(source, BLOB, 0, 8) == DATA[0:8]  # asked again
    assert source.calls == [(0, 8), (0, 8)]


async def test_a_short_piece_at_the_blob_end_is_short() -> None:
    source = FakeSource()
    async with pieces() as p:
        assert await p.read(source, BLOB, 500, 40) == DATA[500:]
        assert await p.read(source, BLOB, 505, 10) == DATA[505:]  # kept
    assert source.calls == [(500, 40)]


async def test_readers_waiting_when_the_daemon_stops_are_told_so() -> None:
    source = FakeSource(gated=True)
    workers = Workers(2)  # as the daemon's: a cancelled call stops being waited for
    errors: list[BaseException] = []
    try:
        async with trio.open_nursery() as readers, trio.open_nursery() as daemon:
            p = Pieces(daemon, trio.CapacityLimiter(4), workers.run_sync)

            async def reader() -> None:
                try:
                    await p.read(source, BLOB, 0, 8)
                except TemporaryFailure as error:
                    errors.append(error)

            readers.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            daemon.cancel_scope.cancel()
    finally:
        source.gate.set()
        workers.close()
    assert len(errors) == 1 and "stopping" in str(errors[0])


@pytest.mark.parametrize("replayed", [False, True])
async def test_a_client_reads_a_blob_it_was_told_of_by_pieces(
    tmp_path: Path, replayed: bool
) -> None:
    """A windows blob (``add_blob``), through a daemon over its socket: each range is
    fetched alone and comes back in the answer; a range of a layer is fetched as chunks."""
    source = TwoBlobs()
    origin = HandleOrigin("blobs")
    windows = Digest("sha256:" + "ef" * 32)
    root = tmp_path / "cache"
    root.mkdir()
    with DiskCache.open(root, 256 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, cache, lambda asked: source)
            client = CacheClient(root, {BLOB: RemoteBlob(origin, len(DATA), exact=True)})
            client.add_blob(windows, BLOB, len(DATA))
            try:
                if replayed:  # a trace replayed: its windows are the mount's, still pieces
                    client.replaying = [(BLOB, [(0, 16)])]
                got = await trio.to_thread.run_sync(client.read_range, windows, 37, 13)
                assert await trio.to_thread.run_sync(client.prefetch, windows, 70, 9) == 1
                ahead = await trio.to_thread.run_sync(client.read_range, windows, 72, 5)
                layer = await trio.to_thread.run_sync(client.read_range, BLOB, 37, 13)
                facts = await trio.to_thread.run_sync(status, root)
            finally:
                client.close()
                nursery.cancel_scope.cancel()
    assert (got, ahead, layer) == (DATA[37:50], DATA[72:77], DATA[37:50])
    assert source.calls == [(37, 13), (70, 9), (32, 32)]
    assert source.digests == [windows, windows, BLOB]
    assert (facts.fetches, facts.fetched_bytes) == (3, 13 + 9 + 32)


async def test_no_more_than_max_kept_pieces_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """However small: a read of a blob scans the pieces kept of it."""
    monkeypatch.setattr(pieces_module, "MAX_KEPT", 10)
    source = FakeSource()
    async with pieces() as p:
        for offset in range(11):
            await p.read(source, BLOB, offset, 1)
        assert len(p._kept) == 10
        await p.read(source, BLOB, 0, 1)  # the oldest went
    assert len(source.calls) == 12


async def test_a_piece_past_the_blob_end_is_not_kept() -> None:
    source = FakeSource()
    async with pieces() as p:
        assert await p.read(source, BLOB, len(DATA) + 10, 10) == b""
        assert p.used == 0


async def test_a_reader_waiting_on_a_piece_counts_as_waiting_on_a_fetch() -> None:
    source = FakeSource(gated=True)
    waiting: list[int] = []
    async with trio.open_nursery() as nursery:
        p = Pieces(nursery, trio.CapacityLimiter(4), trio.to_thread.run_sync,
                   demand=lambda change: waiting.append(change))  # fmt: skip
        nursery.start_soon(p.read, source, BLOB, 0, 8)
        await trio.testing.wait_all_tasks_blocked()
        assert waiting == [+1]  # background fetch and replays hold back meanwhile
        source.gate.set()
    assert waiting == [+1, -1]


async def test_another_origins_failure_is_not_a_readers_own() -> None:
    # Another repository's, which does not hold the blob.
    theirs = FakeSource(gated=True, failures=[NotFound(f"blob {BLOB} is not in this repository")])
    ours = FakeSource(gated=True)
    got: list[bytes] = []
    failed: list[BaseException] = []
    async with pieces() as p:

        async def their_reader() -> None:
            try:
                await p.read(theirs, BLOB, 0, 16)
            except NotFound as error:
                failed.append(error)

        async def our_reader() -> None:
            got.append(await p.read(ours, BLOB, 4, 8))

        async with trio.open_nursery() as readers:
            readers.start_soon(their_reader)
            await trio.testing.wait_all_tasks_blocked()
            readers.start_soon(our_reader)  # ours never join their flight, though it
            readers.start_soon(our_reader)  # holds their range: one of ours
            await trio.testing.wait_all_tasks_blocked()
            theirs.gate.set()  # it fails: not ours
            await trio.testing.wait_all_tasks_blocked()
            ours.gate.set()
        assert p._flights == {}
    assert len(failed) == 1 and got == [DATA[4:12], DATA[4:12]]
    assert theirs.calls == [(0, 16)] and ours.calls == [(4, 8)]


def test_a_piece_fits_a_frame() -> None:
    from lazyfs.cache.framing import DEFAULT_MAX_FRAME

    assert 2 * MAX_PIECE < DEFAULT_MAX_FRAME  # the answer's other fields beside it
