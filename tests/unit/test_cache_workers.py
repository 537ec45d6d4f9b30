"""Workers: the daemon's upstream requests run on threads of their own, the warmest first."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.workers import Workers
from providers.digest import Digest
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource


def _thread() -> str:
    return threading.current_thread().name


async def test_results_and_errors_come_back() -> None:
    workers = Workers(2)
    try:
        assert await workers.run_sync(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ZeroDivisionError):
            await workers.run_sync(lambda: 1 // 0)
    finally:
        workers.close()


async def test_calls_one_after_another_all_run_on_one_thread() -> None:
    """A chain of calls, each submitted as soon as the one before returns (a cold
    start's misses), never starts a second thread: the thread is idle again
    before trio hears the call is done."""
    workers = Workers(8, name="chain")
    try:
        for _ in range(500):
            await workers.run_sync(_thread)
        assert workers.started == 1
    finally:
        workers.close()


async def test_a_call_goes_to_the_thread_that_finished_last() -> None:
    """Three calls at once take three threads; each later one goes to the last idle,
    whose HTTP session holds an open connection, and no thread is started for it."""
    workers = Workers(8, name="up")
    gate = threading.Event()
    started = threading.Semaphore(0)
    names: list[str] = []

    def blocked() -> str:
        started.release()
        gate.wait()
        return _thread()

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(lambda: _collect(workers, blocked, names))
            for _ in range(3):
                await trio.to_thread.run_sync(started.acquire)
            gate.set()
        assert len(set(names)) == 3 and workers.started == 3
        last = await workers.run_sync(_thread)
        assert last.startswith("up-")
        for _ in range(5):
            assert await workers.run_sync(_thread) == last
        assert workers.started == 3
    finally:
        workers.close()


async def _collect(workers: Workers, fn: object, into: list[str]) -> None:
    into.append(await workers.run_sync(fn))  # type: ignore[arg-type]


async def test_calls_past_the_limit_wait_for_a_thread() -> None:
    workers = Workers(2)
    gate = threading.Event()
    running = threading.Semaphore(0)
    names: list[str] = []

    def blocked() -> str:
        running.release()
        gate.wait()
        return _thread()

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(lambda: _collect(workers, blocked, names))
            for _ in range(2):
                await trio.to_thread.run_sync(running.acquire)
            assert workers.started == 2  # the other three are queued, not on new threads
            gate.set()
        assert len(names) == 5 and len(set(names)) == 2
    finally:
        workers.close()


async def test_closed_workers_end_their_threads_and_take_no_calls() -> None:
    workers = Workers(2)
    await workers.run_sync(_thread)
    threads = [t for t in threading.enumerate() if t.name.startswith("lazyfs-upstream")]
    workers.close()
    for thread in threads:
        await trio.to_thread.run_sync(thread.join)
    with pytest.raises(RuntimeError):
        await workers.run_sync(_thread)


async def test_the_fetcher_sends_upstream_requests_from_the_workers(tmp_path: Path) -> None:
    class Recording(FakeSource):
        threads: list[str] = []

        def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
            self.threads.append(_thread())
            return super().read_range(digest, offset, length)

    root = tmp_path / "cache"
    root.mkdir()
    source = Recording()
    workers = Workers(4, name="fetch")
    try:
        with DiskCache.open(root, 64 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
            async with trio.open_nursery() as nursery:
                f = Fetcher(cache, nursery, readahead=(0, 0), upstream=workers)
                assert await f.read(source, BLOB, 0, 40) == DATA[:40]
                assert await f.read(source, BLOB, 100, 10) == DATA[100:110]
    finally:
        workers.close()
    assert len(source.threads) == 2
    assert {name.rsplit("-", 1)[0] for name in source.threads} == {"fetch"}
