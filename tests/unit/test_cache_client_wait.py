"""How loudly a mount says the cache daemon is unreachable: a warning only when it is not
known to be starting (a mount starts beside the daemon and often asks before it listens).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path

import pytest

from lazyfs.cache.client import CacheClient, CacheUnavailable, RemoteBlob
from lazyfs.cache.layout import socket_path
from lazyfs.cache.spawn import START_LOCK
from lazyfs.cache.values import HandleOrigin
from tests.support.cache_fakes import BLOB, DATA

CLIENT_LOG = "lazyfs.cache.client_link"  # the socket side of the client


def _unreachable_level(cache_dir: Path, caplog: pytest.LogCaptureFixture) -> int:
    """The level of the client's "unreachable" line on a read nobody answers."""
    client = CacheClient(cache_dir, {BLOB: RemoteBlob(HandleOrigin("blobs"), len(DATA))}, wait=0)
    caplog.clear()
    with caplog.at_level(logging.INFO, CLIENT_LOG), pytest.raises(CacheUnavailable):
        client.read_range(BLOB, 0, 10)
    client.close()
    (level,) = [r.levelno for r in caplog.records if "unreachable" in r.getMessage()]
    return level


def _dead_socket(cache_dir: Path) -> None:
    """What a daemon that died leaves: a socket file nobody listens on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(socket_path(cache_dir)))


def test_a_daemon_that_never_listened_yet_is_waited_for_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert _unreachable_level(tmp_path, caplog) == logging.INFO


def test_a_daemon_being_started_is_waited_for_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _dead_socket(tmp_path)  # the one it replaces
    lock = os.open(tmp_path / START_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what a starter holds until the daemon answers
        assert _unreachable_level(tmp_path, caplog) == logging.INFO
    finally:
        os.close(lock)


def test_a_daemon_that_went_away_and_is_not_starting_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _dead_socket(tmp_path)
    assert _unreachable_level(tmp_path, caplog) == logging.WARNING


def test_a_miss_waits_from_when_the_daemon_stopped_answering_not_from_its_own_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clock that moves only as the client sleeps: each wait is counted, none is spent.
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", sleep)
    client = CacheClient(tmp_path, {BLOB: RemoteBlob(HandleOrigin("blobs"), len(DATA))}, wait=5)
    with pytest.raises(CacheUnavailable):
        client.read_range(BLOB, 0, 10)  # a read-ahead: waits its 5 s
    assert sum(slept) == pytest.approx(5)
    slept.clear()
    with pytest.raises(CacheUnavailable):
        client.read_range(BLOB, 100, 10)  # the kernel's read after it: no minute of its own
    assert slept == []
    clock[0] += 60  # quiet since (cached reads ask nothing): a miss now is a new outage
    with pytest.raises(CacheUnavailable):
        client.read_range(BLOB, 200, 10)
    assert sum(slept) == pytest.approx(5)
    client.close()
