"""A lock waited for until a deadline: taken when free, the caller's error past the deadline."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from providers.fslock import exclusive_lock_until, try_exclusive_lock


class Hung(Exception):
    pass


def test_a_free_lock_is_taken_and_held_for_the_block(tmp_path: Path) -> None:
    path = tmp_path / "start.lock"
    with exclusive_lock_until(path, time.monotonic() + 30, Hung), try_exclusive_lock(path) as free:
        assert not free
    with try_exclusive_lock(path) as free:
        assert free


def test_a_lock_held_past_the_deadline_raises_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "start.lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: flock(2) conflicts as between processes
    try:
        with (
            pytest.raises(Hung, match="stayed locked"),
            exclusive_lock_until(path, time.monotonic(), Hung, pause=0.001),
        ):
            pytest.fail("the block ran without the lock")
    finally:
        os.close(holder)
