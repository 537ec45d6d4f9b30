"""Fetcher: one upstream read per missing chunk however many readers; merging; read-ahead."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from lazyfs.cache.flight import Fetcher
from lazyfs.cache.layout import ChunkKey
from providers.digest import Digest
from providers.errors import NotFound, TemporaryFailure
from tests.support.cache_fakes import (
    BLOB,
    DATA,
    SIZE,
    FakeSource,
    StreamingSource,
    disk_cache,
    fetcher,
)


async def test_concurrent_readers_of_one_range_cause_one_upstream_read(tmp_path: Path) -> None:
    source = FakeSource(gated=True)
    results: list[bytes] = []
    async with fetcher(tmp_path) as f:

        async def reader() -> None:
            results.append(await f.read(source, BLOB, 20, 30))

        async with trio.open_nursery() as readers:
            for _ in range(20):
                readers.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert f.fetches_in_flight == 1
            source.gate.set()
    assert results == [DATA[20:50]] * 20
    assert source.calls == [(16, 48)]  # chunks 1-3, once


async def test_overlapping_readers_fetch_each_chunk_once(tmp_path: Path) -> None:
    source = FakeSource(gated=True)
    # No read-ahead: b continues a, and would read ahead past its end.
    async with fetcher(tmp_path, readahead=(0, 0)) as f:
        got: dict[str, bytes] = {}

        async def reader(name: str, offset: int, length: int) -> None:
            got[name] = await f.read(source, BLOB, offset, length)

        async with trio.open_nursery() as readers:
            readers.start_soon(reader, "a", 0, 64)
            await trio.testing.wait_all_tasks_blocked()
            readers.start_soon(reader, "b", 40, 60)
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
    assert got == {"a": DATA[0:64], "b": DATA[40:100]}
    assert sorted(source.calls) == [(0, 64), (64, 48)]


async def test_a_cancelled_reader_does_not_cancel_the_fetch_for_others(tmp_path: Path) -> None:
    source = FakeSource(gated=True)
    async with fetcher(tmp_path) as f:
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await f.read(source, BLOB, 0, 16))

        impatient = trio.CancelScope()

        async def cancellable() -> None:
            with impatient:
                await reader()

        async with trio.open_nursery() as readers:
            # The first reader starts the fetch; the patient one waits on it too.
            readers.start_soon(cancellable)
            await trio.testing.wait_all_tasks_blocked()
            readers.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            impatient.cancel()
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
        assert got == [DATA[0:16]]
        assert f.cache.contains(ChunkKey(BLOB, 0))
    assert source.calls == [(0, 16)]


async def test_a_failed_fetch_wakes_every_waiter_with_its_error(tmp_path: Path) -> None:
    failure = TemporaryFailure("registry answered 503")
    source = FakeSource(gated=True, failures=[failure])
    errors: list[BaseException] = []
    async with fetcher(tmp_path) as f:

        async def reader() -> None:
            try:
                await f.read(source, BLOB, 0, 40)
            except TemporaryFailure as error:
                errors.append(error)

        async with trio.open_nursery() as readers:
            for _ in range(5):
                readers.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
        assert errors == [failure] * 5
        assert not f.cache.contains(ChunkKey(BLOB, 0))
        # Nothing remembered: the next read fetches again, and succeeds.
        assert await f.read(source, BLOB, 0, 40) == DATA[:40]
    assert source.calls == [(0, 48), (0, 48)]


async def test_an_unknown_blob_is_not_found(tmp_path: Path) -> None:
    async with fetcher(tmp_path) as f:
        with pytest.raises(NotFound):
            await f.read(FakeSource(), Digest("sha256:" + "00" * 32), 0, 10)


@pytest.mark.parametrize(
    ("max_request_chunks", "calls"),
    [(8, [(0, 80)]), (2, [(0, 32), (32, 32), (64, 16)])],
)
async def test_adjacent_misses_are_merged_into_bounded_requests(
    tmp_path: Path, max_request_chunks: int, calls: list[tuple[int, int]]
) -> None:
    source = FakeSource()
    async with fetcher(tmp_path, max_request_chunks=max_request_chunks) as f:
        assert await f.read(source, BLOB, 0, 80) == DATA[:80]
    assert sorted(source.calls) == calls


async def test_only_missing_chunks_are_fetched(tmp_path: Path) -> None:
    source = FakeSource()
    async with fetcher(tmp_path) as f:
        await f.read(source, BLOB, 16, 16)  # chunk 1
        await f.read(source, BLOB, 48, 16)  # chunk 3
        source.calls.clear()
        assert await f.read(source, BLOB, 0, 80) == DATA[:80]
    assert sorted(source.calls) == [(0, 16), (32, 16), (64, 16)]


async def test_sequential_reads_read_ahead(tmp_path: Path) -> None:
    source = FakeSource()
    async with fetcher(tmp_path, readahead=(2, 4)) as f:
        await f.read(source, BLOB, 0, 16)
        await f.read(source, BLOB, 16, 16)
    # The second read was sequential: chunks 2 and 3 came in a request of their own.
    assert sorted(source.calls) == [(0, 16), (16, 16), (32, 32)]
    async with fetcher(tmp_path, readahead=(2, 4)) as f:
        source.calls.clear()
        assert await f.read(source, BLOB, 32, 32) == DATA[32:64]
    assert source.calls == []


async def test_reads_past_the_end_are_short(tmp_path: Path) -> None:
    source = FakeSource()
    async with fetcher(tmp_path) as f:
        assert await f.read(source, BLOB, 500, 100) == DATA[500:]
        assert await f.read(source, BLOB, 512, 10) == b""
        assert await f.read(source, BLOB, 600, 10) == b""
        assert await f.read(source, BLOB, 0, 0) == b""
    # The first read learnt where the blob ends: no request went past it again.
    assert source.calls == [(496, 112)]


async def test_a_known_blob_size_saves_the_requests_past_its_end(tmp_path: Path) -> None:
    source = FakeSource()
    async with fetcher(tmp_path) as f:
        assert await f.read(source, BLOB, 490, 100, blob_size=len(DATA)) == DATA[490:]
        assert await f.read(source, BLOB, 520, 10, blob_size=len(DATA)) == b""
    assert source.calls == [(480, 32)]


async def test_extents_point_at_the_cached_bytes(tmp_path: Path) -> None:
    source = FakeSource()
    async with fetcher(tmp_path) as f:
        extents = await f.read_extents(source, BLOB, 10, 30)
    assert [(e.file_offset, e.blob_offset, e.length) for e in extents] == [
        (10, 10, 6),
        (0, 16, 16),
        (0, 32, 8),
    ]
    for extent in extents:
        with open(extent.path, "rb") as chunk:
            chunk.seek(extent.file_offset)
            assert chunk.read(extent.length) == DATA[extent.blob_offset :][: extent.length]


async def test_prefetch_fetches_in_the_background(tmp_path: Path) -> None:
    source = FakeSource()
    async with fetcher(tmp_path) as f:
        await f.read(source, BLOB, 0, 16)
        assert f.prefetch(source, BLOB, [(0, 64), (128, 16)]) == 4  # chunk 0 is cached
        assert f.prefetch(source, BLOB, [(0, 64)]) == 0  # in flight already
    assert sorted(source.calls) == [(0, 16), (16, 48), (128, 16)]
    async with fetcher(tmp_path) as f:
        source.calls.clear()
        assert await f.read(source, BLOB, 0, 64) == DATA[:64]
    assert source.calls == []


async def test_a_read_larger_than_the_cache_succeeds_and_the_cache_shrinks_back(
    tmp_path: Path,
) -> None:
    source = FakeSource()
    with disk_cache(tmp_path / "cache", chunks=2) as cache:
        async with trio.open_nursery() as nursery:
            f = Fetcher(cache, nursery)
            # Three chunks pinned at once: over the limit while the read needs them.
            assert await f.read(source, BLOB, 0, 48) == DATA[:48]
            assert await f.read(source, BLOB, 100, 100) == DATA[100:200]
        stats = cache.stats()
        assert stats.used_bytes <= stats.limit_bytes and stats.pinned_chunks == 0


async def test_chunk_writes_run_at_most_the_write_limit_at_once(tmp_path: Path) -> None:
    """A prefetch of many chunks does not take one thread per chunk write.

    Each write holds until the test has seen every write either running or
    queued for the Fetcher's write limiter; only then do they go on. Without
    that limiter all 32 writes run at once, in trio's default threads.
    """
    chunks = len(DATA) // SIZE
    lock = threading.Lock()
    entered = threading.Condition(lock)
    gate = threading.Event()
    state = {"inside": 0, "most": 0, "entries": 0}
    async with fetcher(tmp_path) as f:
        real_put = f.cache.put

        def counting_put(key: ChunkKey, data: bytes, *, replace: bool = False) -> Path:
            with lock:
                state["inside"] += 1
                state["entries"] += 1
                state["most"] = max(state["most"], state["inside"])
                entered.notify_all()
            try:
                assert gate.wait(timeout=60), "the writes were never let go"
                return real_put(key, data, replace=replace)
            finally:
                with lock:
                    state["inside"] -= 1

        def entry_after(seen: int) -> None:
            with lock:
                entered.wait_for(lambda: state["entries"] > seen, timeout=60)

        f.cache.put = counting_put  # type: ignore[method-assign]
        try:
            with trio.fail_after(60):  # a bound on a hang, not a timing threshold
                source = StreamingSource([(0, len(DATA))])
                assert f.prefetch(source, BLOB, [(0, len(DATA))], max_request_chunks=chunks)
                # Every chunk handed on from the upstream thread (arrival.cut): each is a
                # put task by the time no task can run.
                assert await trio.to_thread.run_sync(source.sent.wait, 60)
                while True:
                    await trio.testing.wait_all_tasks_blocked()
                    with lock:
                        inside, seen = state["inside"], state["entries"]
                    if inside + f.chunk_writes.statistics().tasks_waiting >= chunks:
                        break
                    await trio.to_thread.run_sync(entry_after, seen)
        finally:
            gate.set()
    assert state["most"] == f.chunk_writes.total_tokens < chunks
    assert state["entries"] == chunks
    assert all(f.cache.contains(ChunkKey(BLOB, i)) for i in range(chunks))
