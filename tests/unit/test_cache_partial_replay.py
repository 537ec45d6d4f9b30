"""A replayed trace through the daemon: the bytes it names cross, not the chunks around them.

In process: a daemon over its socket, a client reading and asking through it,
and a blob source over bytes in memory that records its calls (16-byte
chunks: a trace's ranges start and end inside them).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.client import CacheClient, RemoteBlob, status
from lazyfs.cache.daemon import serve
from lazyfs.cache.values import HandleOrigin
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource

T = TypeVar("T")


@asynccontextmanager
async def client(tmp_path: Path, source: FakeSource) -> AsyncIterator[CacheClient]:
    root = tmp_path / "cache"
    root.mkdir()
    with DiskCache.open(root, 256 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, cache, lambda asked: source)
            reader = CacheClient(root, {BLOB: RemoteBlob(HandleOrigin("blobs"), len(DATA))})
            try:
                yield reader
            finally:
                reader.close()
                nursery.cancel_scope.cancel()


async def off(call: Callable[..., T], *args: object) -> T:
    return await trio.to_thread.run_sync(call, *args)


async def test_a_replayed_trace_fetches_its_bytes_not_the_chunks_around_them(
    tmp_path: Path,
) -> None:
    source = FakeSource()
    steps = [(BLOB, [(5, 30)]), (BLOB, [(60, 10)])]
    async with client(tmp_path, source) as reader:
        reader.replaying = steps
        # Chunk 0 from 5, chunk 1 whole, 2 up to 35; then 3 from 60 and 4 up to 70, which
        # meet across 4's edge: one piece.
        assert await off(reader.replay, BLOB, [(5, 30)]) == 3
        assert await off(reader.replay, BLOB, [(60, 10)]) == 1
        got = [await off(reader.read_range, BLOB, o, n) for o, n in ((5, 30), (60, 10))]
        again = await off(reader.read_range, BLOB, 20, 14)  # whole chunk 1 and part of 2
        facts = await off(status, tmp_path / "cache")
    assert got == [DATA[5:35], DATA[60:70]] and again == DATA[20:34]
    assert sorted(source.calls) == [(5, 11), (16, 16), (32, 3), (60, 10)]
    assert facts.fetched_bytes == 40  # as chunks, 0 to 4: 80


async def test_an_ask_of_a_replayed_range_fetches_its_partial_chunks_as_pieces(
    tmp_path: Path,
) -> None:
    # As a published index's reader asks for the spans ahead of a read.
    source = FakeSource()
    async with client(tmp_path, source) as reader:
        reader.replaying = [(BLOB, [(5, 30)])]
        assert await off(reader.prefetch, BLOB, 5, 30) == 3
        got = await off(reader.read_range, BLOB, 5, 30)
    assert got == DATA[5:35]
    assert sorted(source.calls) == [(5, 11), (16, 16), (32, 3)]


async def test_bytes_of_a_partial_chunk_the_trace_did_not_name_are_read_as_its_chunk(
    tmp_path: Path,
) -> None:
    source = FakeSource()
    async with client(tmp_path, source) as reader:
        reader.replaying = [(BLOB, [(5, 30)])]
        assert await off(reader.read_range, BLOB, 0, 8) == DATA[0:8]  # across the part's start
        assert await off(reader.read_range, BLOB, 5, 11) == DATA[5:16]  # in the chunk now
    assert source.calls == [(0, 16)]


async def test_a_read_before_the_replay_fetches_the_piece_the_replay_asks_once(
    tmp_path: Path,
) -> None:
    # The program overtakes the replay: its read of a part asks the part's whole piece,
    # which the replay then finds kept, not another range over the same bytes.
    source = FakeSource()
    async with client(tmp_path, source) as reader:
        reader.replaying = [(BLOB, [(5, 30)])]
        assert await off(reader.read_range, BLOB, 8, 4) == DATA[8:12]
        assert await off(reader.replay, BLOB, [(5, 30)]) == 2  # chunk 1 and 32..35
        got = await off(reader.read_range, BLOB, 5, 30)
    assert got == DATA[5:35]
    assert sorted(source.calls) == [(5, 11), (16, 16), (32, 3)]


async def test_a_read_across_parts_and_chunks_asks_them_all_at_once(tmp_path: Path) -> None:
    source = FakeSource(gated=True)
    async with client(tmp_path, source) as reader:
        reader.replaying = [(BLOB, [(5, 30)])]
        got: list[bytes] = []

        async def read() -> None:
            got.append(await off(reader.read_range, BLOB, 5, 30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            try:
                with trio.fail_after(10):  # bounds a failing test only
                    while len(source.calls) < 3:  # not one after the other: all three out
                        await trio.sleep(0)  # a checkpoint, not a delay: the daemon asks
            finally:
                source.gate.set()
        # Read again: the parts are cut from the pieces the daemon keeps, nothing fetched.
        again = await off(reader.read_range, BLOB, 6, 28)
    assert got == [DATA[5:35]] and again == DATA[6:34]
    assert sorted(source.calls) == [(5, 11), (16, 16), (32, 3)]
