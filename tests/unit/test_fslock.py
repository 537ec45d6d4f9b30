"""Lock files: a lock waited for until a deadline, taken when free, the caller's error past
the deadline; a lock file its holder removed is never held twice."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from providers.fslock import exclusive_lock, exclusive_lock_until, remove_lock, try_exclusive_lock


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


def test_a_lock_file_removed_while_waited_on_is_not_held_by_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.lock"
    real = fcntl.flock
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    real(holder, fcntl.LOCK_EX)
    newcomer: list[int] = []

    def flock(fd: int, operation: int) -> None:
        if not newcomer:
            # We opened the file and are about to lock it: its holder removes it and lets
            # go, and a newcomer locks the file the path names now.
            remove_lock(path)
            os.close(holder)
            newcomer.append(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            real(newcomer[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    try:
        with try_exclusive_lock(path) as free:
            assert not free  # the newcomer's: not the lock of a file no one else opens
    finally:
        os.close(newcomer[0])
    with exclusive_lock(path):
        remove_lock(path)
        assert not path.exists()
    with try_exclusive_lock(path) as free:
        assert free and path.exists()
