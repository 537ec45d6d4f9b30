"""Waiting for a store or container lock another process holds ends when cancelled."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from lazyfs.store.disk import locked_async

# Releases the held lock if the wait could not be cancelled, so that such a
# wait fails the test instead of hanging it.
GUARD = 30.0


async def test_a_wait_for_a_held_lock_ends_when_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: flock(2) conflicts as between processes
    guard = threading.Timer(GUARD, fcntl.flock, (holder, fcntl.LOCK_UN))
    guard.start()
    try:

        async def wait_for_the_lock() -> None:
            async with locked_async(path):
                pytest.fail("took a lock that another holder has")

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_the_lock)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
    finally:
        guard.cancel()
        os.close(holder)


async def test_the_lock_is_taken_once_free_and_released_after(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    async with locked_async(path):
        other = os.open(path, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(other)
