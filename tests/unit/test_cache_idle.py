"""A cache daemon with nothing to do stops (``lazyfs.cache.idle``): on trio's mock clock,
in-process over its real socket, and as ``lazyfs daemon --idle_exit``."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
import trio.testing

from lazyfs.cache import service
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.daemon import serve
from lazyfs.cache.idle import Idle
from lazyfs.cache.layout import ChunkKey
from lazyfs.cache.messages import (
    BadRequest,
    BlobRange,
    HandleOrigin,
    Origin,
    Prefetch,
    PrefetchOk,
    Read,
    ReadOk,
    Status,
    StatusOk,
)
from lazyfs.cache.spawn import START_LOCK
from providers.fslock import exclusive_lock, try_exclusive_lock
from providers.source import BlobSource
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource
from tests.support.cache_socket import connect

FAKE = HandleOrigin("fake")


@dataclass
class Serving:
    path: Path
    cache: DiskCache
    stopped: trio.Event


@asynccontextmanager
async def daemon(tmp_path: Path, source: FakeSource, idle: Idle) -> AsyncIterator[Serving]:
    def resolve(origin: Origin) -> BlobSource:
        if origin == FAKE:
            return source
        raise BadRequest(f"unknown origin {origin}")

    root = tmp_path / "c"
    root.mkdir(exist_ok=True)
    stopped = trio.Event()

    async def serving(cache: DiskCache, task_status: trio.TaskStatus[Path]) -> None:
        await serve(cache, resolve, idle=idle, task_status=task_status)
        stopped.set()

    with DiskCache.open(root, 64 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(serving, cache)
            yield Serving(path, cache, stopped)
            nursery.cancel_scope.cancel()


async def fetched(path: Path) -> None:
    """Return once the daemon at ``path`` has no fetch in flight (asked on a connection of
    its own, closed after: the clock stands still meanwhile)."""
    async with connect(path) as client:
        for ask in itertools.count(1):
            status = await client.call(Status(ask))
            assert isinstance(status, StatusOk)
            if not status.fetches_in_flight:
                break
            await trio.testing.wait_all_tasks_blocked()  # its thread answers in real time
    await trio.testing.wait_all_tasks_blocked()


async def answering(path: Path) -> None:
    """Return once the daemon at ``path`` answers a status request; real time passes, the
    mock clock's does not (a daemon coming up binds its socket in a thread)."""
    while True:
        try:
            async with connect(path) as client:
                if isinstance(await client.call(Status(1)), StatusOk):
                    return
        except OSError:
            pass  # not bound, or not listening yet
        await trio.testing.wait_all_tasks_blocked()


def idle(seconds: float, first: float, may_stop: Callable[[], bool] = lambda: True) -> Idle:
    return Idle(seconds, first, may_stop)


async def after(clock: trio.testing.MockClock, seconds: float) -> None:
    """Let ``seconds`` pass on the mock clock, a second at a time, as a watcher sees them."""
    for _ in range(int(seconds)):
        clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()


async def test_a_daemon_nobody_connects_to_stops_after_its_first_idle(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with daemon(tmp_path, FakeSource(), idle(100, 10)) as served:
        await after(mock_clock, 8)
        assert not served.stopped.is_set() and served.path.exists()
        await after(mock_clock, 5)
        assert served.stopped.is_set()
        assert not served.path.exists()  # the next start finds no socket


async def test_a_connected_mount_keeps_it_and_its_going_starts_the_wait(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with daemon(tmp_path, FakeSource(), idle(10, 5)) as served:
        async with connect(served.path) as client:
            assert isinstance(await client.call(Status(1)), StatusOk)
            await after(mock_clock, 100)
            assert not served.stopped.is_set()
            # A mount's read: the daemon is used, and waits the longer wait from now on.
            assert isinstance(await client.call(Read(2, BlobRange(BLOB, 0, 4), FAKE)), ReadOk)
        await fetched(served.path)
        await after(mock_clock, 8)
        assert not served.stopped.is_set()
        await after(mock_clock, 5)
        assert served.stopped.is_set()


async def test_a_status_asked_between_two_looks_puts_the_stop_off(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with daemon(tmp_path, FakeSource(), idle(100, 10)) as served:
        await after(mock_clock, 9)
        # A start's "does it answer?", then its mount comes: not to a daemon gone since.
        async with connect(served.path) as client:
            assert isinstance(await client.call(Status(1)), StatusOk)
        await trio.testing.wait_all_tasks_blocked()  # gone before the next look
        await after(mock_clock, 8)
        assert not served.stopped.is_set() and served.path.exists()
        # Status requests alone are no use of it: the shorter wait holds.
        await after(mock_clock, 6)
        assert served.stopped.is_set()


async def test_status_requests_keep_no_used_daemon_past_its_wait(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # A monitor's `lazyfs cache` every so often: no use, but each puts a stop off a little.
    async with daemon(tmp_path, FakeSource(), idle(100, 10)) as served:
        async with connect(served.path) as client:
            assert isinstance(await client.call(Read(1, BlobRange(BLOB, 0, 4), FAKE)), ReadOk)
        await fetched(served.path)  # used until now: t = 0
        for ask in (50, 45):
            await after(mock_clock, ask)
            async with connect(served.path) as client:
                assert isinstance(await client.call(Status(ask)), StatusOk)
            await trio.testing.wait_all_tasks_blocked()
        await after(mock_clock, 8)  # t = 103: unused for 100 s, but a status 8 s ago
        assert not served.stopped.is_set()
        await after(mock_clock, 7)
        assert served.stopped.is_set()


async def test_a_status_request_in_flight_at_a_look_is_no_use_either(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with daemon(tmp_path, FakeSource(), idle(100, 10)) as served:
        async with connect(served.path) as client:
            assert isinstance(await client.call(Read(1, BlobRange(BLOB, 0, 4), FAKE)), ReadOk)
        await fetched(served.path)  # used until now: t = 0
        await after(mock_clock, 50)
        async with connect(served.path) as client:  # open across the look at t = 51
            assert isinstance(await client.call(Status(2)), StatusOk)
            await after(mock_clock, 1)
            assert not served.stopped.is_set()
        await trio.testing.wait_all_tasks_blocked()
        await after(mock_clock, 44)  # t = 95
        assert not served.stopped.is_set()
        await after(mock_clock, 10)
        assert served.stopped.is_set()


async def test_a_fetch_in_hand_keeps_it_after_its_mount_left(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    source = FakeSource(gated=True)
    async with daemon(tmp_path, source, idle(10, 10)) as served:
        async with connect(served.path) as client:
            asked = Prefetch(1, (BlobRange(BLOB, 0, 2 * SIZE),), FAKE, len(DATA))
            assert isinstance(await client.call(asked), PrefetchOk)
        await after(mock_clock, 30)
        assert not served.stopped.is_set()  # the fetch waits at the gate
        source.gate.set()
        await fetched(served.path)
        await after(mock_clock, 15)
        assert served.stopped.is_set()


async def test_a_replay_ends_its_task_with_its_queue(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with daemon(tmp_path, FakeSource(), idle(10, 10)) as served:
        async with connect(served.path) as client:
            replay = Prefetch(1, (BlobRange(BLOB, 0, 4 * SIZE),), FAKE, len(DATA), replay=True)
            assert isinstance(await client.call(replay), PrefetchOk)
        await fetched(served.path)
        assert served.cache.contains(ChunkKey(BLOB, 3))
        await after(mock_clock, 15)
        assert served.stopped.is_set()


async def test_it_stays_while_it_may_not_stop(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    allowed = False
    async with daemon(tmp_path, FakeSource(), idle(10, 10, lambda: allowed)) as served:
        await after(mock_clock, 30)
        assert not served.stopped.is_set() and served.path.exists()
        allowed = True
        await after(mock_clock, 1)
        assert served.stopped.is_set()


def daemon_command(work: Path, *flags: str) -> list[str]:
    return [sys.executable, "-P", "-m", "lazyfs", "--work_dir", str(work), "daemon", *flags]


def test_lazyfs_daemon_with_idle_exit_stops_and_lets_the_next_start_in(tmp_path: Path) -> None:
    work = tmp_path / "w"
    cache = work / "cache"
    done = subprocess.run(
        daemon_command(work, "--idle_exit", "0.5"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing to do for 0.5s: stopping" in done.stderr
    assert not (cache / "daemon.sock").exists() and not (cache / "daemon.pid").exists()
    with exclusive_lock(cache / START_LOCK):  # let go: a start is not kept waiting
        pass


def test_lazyfs_daemon_refuses_idle_exit_that_is_not_seconds(tmp_path: Path) -> None:
    done = subprocess.run(
        daemon_command(tmp_path / "w", "--idle_exit", "-1"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["lazyfs: --idle_exit -1: want seconds over 0"]


async def test_no_stop_while_a_chore_runs_and_the_start_lock_stays_free(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # Image GC waits on a provision's lock: a stop behind it would hold every start.
    gate = threading.Event()
    runs: list[int] = []

    def job(_forget: service.Forgets) -> None:
        runs.append(1)
        if len(runs) == 1:
            assert gate.wait(timeout=30), "the gate was never opened"

    def resolve(origin: Origin) -> BlobSource:
        raise BadRequest(f"unknown origin {origin}")

    root = tmp_path / "c"
    root.mkdir()
    chore = service.ChoreRunning()
    stopped = trio.Event()
    with contextlib.ExitStack() as stopping:
        idle = Idle(5, 5, service.stopper(root, chore, stopping))
        with DiskCache.open(root, 64 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:

            async def serving() -> None:
                await service._serve(cache, resolve, False, (3.0, job, chore), idle)
                stopped.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serving)
                # The clock stands still until it serves (its socket is bound in a thread)
                # and the chore, started as it began to, is asleep.
                await answering(root / "daemon.sock")
                await trio.testing.wait_all_tasks_blocked()
                await after(mock_clock, 4)  # the chore's first run began at 3 s
                assert chore.now
                await after(mock_clock, 20)
                assert not stopped.is_set() and (root / "daemon.sock").exists()
                with try_exclusive_lock(root / START_LOCK) as free:
                    assert free
                gate.set()
                while chore.now:
                    await trio.testing.wait_all_tasks_blocked()  # its thread ends in real time
                await after(mock_clock, 10)
                assert stopped.is_set()
