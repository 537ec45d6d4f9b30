"""How loudly a mount says the cache daemon is unreachable: a warning only when it is not
known to be starting (a mount starts beside the daemon and often asks before it listens).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lazyfs.cache.client import CacheClient, CacheUnavailable, RemoteBlob
from lazyfs.cache.framing import FrameDecoder, encode_frame
from lazyfs.cache.layout import socket_path
from lazyfs.cache.messages import EvictOk, decode_request, encode_response
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


class _FakeDaemon:
    """A daemon's socket answering evictions, each connection in a thread; ``die`` closes
    the listener (the socket file stays, refusing connects). After it, the first request
    is hung up on, the second answered (an answer on its way as the daemon went), and
    every other hung up on."""

    def __init__(self, path: Path, connections: int) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.together = threading.Barrier(connections)  # hold answers until all have asked
        self.dead = False
        self.after_death = 0  # requests since
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed: dead
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = FrameDecoder()
        first = True
        with conn:
            while data := conn.recv(1 << 16):
                for payload in decoder.feed(data):
                    request = decode_request(payload)
                    if first:
                        self.together.wait(timeout=30)
                        first = False
                    with self.lock:
                        if self.dead:
                            self.after_death += 1
                        hang_up = self.dead and self.after_death != 2
                    if hang_up:
                        return
                    conn.sendall(encode_frame(encode_response(EvictOk(request.id, 0))))

    def die(self) -> None:
        self.dead = True
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def test_an_answer_on_a_connection_from_before_the_outage_does_not_end_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = _FakeDaemon(socket_path(tmp_path), connections=2)
    client = CacheClient(tmp_path, {BLOB: RemoteBlob(HandleOrigin("blobs"), len(DATA))}, wait=5)
    # Two asks at once: two connections, both left open in the client's pool.
    with ThreadPoolExecutor(2) as pool:
        asks = [pool.submit(client.evict, BLOB, 0, 1, "test") for _ in range(2)]
        assert [ask.result(timeout=30) for ask in asks] == [0, 0]
    daemon.die()
    start = time.monotonic() + 100  # the pool's connections were opened before
    clock = [start]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", sleep)
    with caplog.at_level(logging.INFO, CLIENT_LOG):
        # Hung up on, so the outage begins; then the other, answering as it went.
        assert client.evict(BLOB, 0, 1, "test") == 0
        with pytest.raises(CacheUnavailable):
            client.evict(BLOB, 0, 1, "test")  # the same outage: waited from its start
    assert clock[0] == pytest.approx(start + 5)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert not any("answers again" in m for m in messages)
    client.close()
