"""Threads of the daemon's own for its upstream requests, so their connections stay open.

The registry client keeps one HTTP session, and so one pool of open
connections, per thread (``providers.registry_http``). Run on trio's shared
thread cache, an upstream request lands on whichever worker thread was idle
last, often one that only ever wrote chunks: it has no connection, and
opens one, a TCP handshake (a round trip) before the request. A cold start
is a chain of such misses, one after another.

``Workers`` runs the requests on threads that do nothing else, and hands a
request to the thread that finished one last (its connection is the
warmest), starting another thread only when all are busy, up to ``limit``.
So a miss finds an open connection as soon as one has been opened.

``run_sync`` is ``trio.to_thread.run_sync`` on those threads: a task
cancelled while its call runs stops waiting (the call runs on, its result
dropped; an HTTP request cannot be interrupted anyway). ``close`` ends the
threads once their calls return. Thread-safe where it must be: the trio
side calls ``run_sync`` only from the trio thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

T = TypeVar("T")
# A call and how to tell trio it is done. The thread tells trio only after it
# is idle again (or has taken a pending call): told first, trio could submit
# the next call before the thread is back, and it would go to a colder one.
_Job = tuple[Callable[[], None], Callable[[], None]]


class Workers:
    """Up to ``limit`` threads running blocking calls for trio, most recently idle first."""

    def __init__(self, limit: int, name: str = "lazyfs-upstream") -> None:
        if limit < 1:
            raise ValueError(f"a pool of {limit} threads")
        self.limit = limit
        self.name = name
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Job | None]] = []  # a stack: last idle on top
        self._pending: list[_Job] = []  # when every thread is busy
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def started(self) -> int:
        """Threads started so far."""
        return len(self._threads)

    async def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on one of the threads; its result, or what it raised."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        result: list[outcome.Outcome[T]] = []

        def call() -> None:
            result.append(outcome.capture(fn, *args))

        def notify() -> None:
            with contextlib.suppress(trio.RunFinishedError):  # nobody waits any more
                token.run_sync_soon(done.set)

        self._submit((call, notify))
        await done.wait()
        return result[0].unwrap()

    def close(self) -> None:
        """End the threads once their calls return; calls submitted after raise RuntimeError."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)

    def _submit(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            if self._idle:
                self._idle.pop().put(job)
                return
            if len(self._threads) >= self.limit:
                self._pending.append(job)
                return
            inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._work,
                args=(inbox,),
                name=f"{self.name}-{len(self._threads)}",
                daemon=True,  # a call stuck upstream does not keep the process alive
            )
            self._threads.append(thread)
        inbox.put(job)
        thread.start()

    def _work(self, inbox: queue.SimpleQueue[_Job | None]) -> None:
        job = inbox.get()
        while job is not None:
            call, notify = job
            call()
            with self._lock:
                following = self._pending.pop(0) if self._pending else None
                closed = self._closed
                if following is None and not closed:
                    self._idle.append(inbox)
            notify()
            if following is not None:
                job = following
            elif closed:
                return
            else:
                job = inbox.get()
