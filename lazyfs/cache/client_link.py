"""The socket side of a mount's cache client: a pool of connections to the daemon, and the
wait for it when it is gone (``lazyfs.cache.client`` has the rest)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path

from lazyfs.cache.connection import Connection, failure_error
from lazyfs.cache.framing import ProtocolError
from lazyfs.cache.layout import socket_path
from lazyfs.cache.messages import Failure, Request, Response
from lazyfs.cache.spawn import start_daemon, started_as, starting
from providers.errors import LazyfsError, TemporaryFailure

log = logging.getLogger(__name__)

_IDLE_CONNECTIONS = 8
# Asks failing no further apart than this are one outage of the daemon, waited for once;
# a failure after a quiet spell (cached reads ask nothing) is a new one, waited for anew.
_OUTAGE_GAP = 5.0


class CacheUnavailable(TemporaryFailure):
    """The cache daemon could not be reached within the wait: a miss cannot be served."""


class DaemonLink:
    """Requests to the daemon of ``cache_dir``, each on a connection of its own while it is
    out (a small pool of idle ones), waiting for a daemon that is gone up to ``wait``
    seconds from when it stopped answering: for every ask, not each (a read's read-ahead,
    then the kernel's read, each waited a minute of their own). ``hint``: its asks are
    hints, and a daemon not answering is no warning."""

    def __init__(self, cache_dir: Path, *, wait: float, hint: bool) -> None:
        self.cache_dir = cache_dir
        self.wait = wait
        self.hint = hint
        self._socket = socket_path(cache_dir)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._idle: list[tuple[Connection, float]] = []  # each with when it was opened
        self._layout_agreed = False  # whether the daemon answering has said its chunk size
        self._down: float | None = None  # since when it has not answered (monotonic)
        self._failed = 0.0  # when an ask last found it gone

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.close()

    def _ask(self, request: Request) -> Response:
        """The daemon's answer to ``request``, waiting for the daemon when it is gone."""
        deadline: float | None = None
        pause = 0.05
        while True:
            connection = None
            try:
                connection, opened = self._take()
                response = connection.call(request)
            except (OSError, ProtocolError) as error:
                if connection is not None:
                    connection.close()
                # The one that answers next may be another daemon, of other chunks.
                self._layout_agreed = False
                now = time.monotonic()
                if deadline is None:
                    with self._lock:
                        first = self._down is None or now - self._failed > _OUTAGE_GAP
                        if first:
                            self._down = now
                        assert self._down is not None
                        deadline = self._down + self.wait
                    if first:
                        # Expected while the daemon starts beside this mount: no warning then.
                        quiet = self.hint or starting(self.cache_dir)
                        level = logging.INFO if quiet else logging.WARNING
                        log.log(level, "cache daemon at %s unreachable (%s); a miss waits up to"
                                " %gs for it", self._socket, error, self.wait)  # fmt: skip
                        if not self.hint:
                            self._start_again()
                with self._lock:
                    self._failed = now
                if now >= deadline:
                    raise CacheUnavailable(
                        f"the cache daemon at {self._socket} did not answer within "
                        f"{self.wait:g}s: {error}"
                    ) from None
                time.sleep(min(pause, deadline - now))
                # Short: a mount starts beside the daemon and may ask before it listens.
                pause = min(pause * 2, 0.2)
                continue
            self._give(connection, opened)
            back = False
            if self._down is not None:  # most asks: the daemon answered the last one too
                with self._lock:
                    # An answer on a connection older than the outage may have been sent
                    # before the daemon went: only one opened since says it is back.
                    back = self._down is not None and opened >= self._down
                    if back:
                        self._down = None
            if back:
                log.info("cache daemon at %s answers again", self._socket)
            if isinstance(response, Failure):
                raise failure_error(request, response)
            return response

    def _start_again(self) -> None:
        """Start the daemon as a command last started it (``spawn.started_as``), unless one
        answers or is on its way: it may have been killed, or exited idle under this mount
        (its connections gone with an earlier daemon, it never knew this one). Not for a
        daemon no command started (a service's: its manager restarts it)."""
        spec = started_as(self.cache_dir)
        if spec is None:
            return
        try:
            start = start_daemon(spec)
        except (LazyfsError, OSError) as error:
            log.warning("the cache daemon at %s could not be started again: %s", self._socket,
                        error)  # fmt: skip
            return
        if start is not None:
            if start.pid is not None:
                log.info("started the cache daemon again (pid %d)", start.pid)
            start.hand_over()  # the wait for its answer is the ask's own

    def _take(self) -> tuple[Connection, float]:
        """An idle connection, or a new one; with when it was opened."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        opened = time.monotonic()
        return Connection(self._socket), opened

    def _give(self, connection: Connection, opened: float) -> None:
        with self._lock:
            if len(self._idle) < _IDLE_CONNECTIONS:
                self._idle.append((connection, opened))
                return
        connection.close()
