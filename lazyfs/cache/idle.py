"""When a cache daemon with nothing to do stops: ``Idle`` and ``stop_when_idle``.

A daemon a command started (``lazyfs.cache.spawn``) should not outlive its
use by days: every mount it served holds a connection for its whole life
(``lazyfs.cache.client_link`` keeps them), so a daemon with no connection
open and no work in hand has no mount to serve. Work in hand is any task in
the daemon's nursery, each a fetch, a background fetch or a replay's run:
what a mount asked for goes on after it left, and is let finish.

Stopping must not race a start of the next daemon: ``Idle.may_stop`` takes
the start lock without waiting (a start in progress means a caller is about
to connect: not idle then), and the process holds it until it has let go of
the cache. A caller that comes meanwhile waits for the lock, then finds no
daemon and starts one. The listener closes and the socket goes at once: a
connect then finds nothing, and one already queued gets its connection
reset, which callers take as no daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio


@dataclass(frozen=True)
class Idle:
    """Stop after ``seconds`` with no connection and no work in hand (``first``: while
    nobody has connected yet), once ``may_stop`` says so; it keeps what it takes."""

    seconds: float
    first: float
    may_stop: Callable[[], bool]

    def look_every(self) -> float:
        """How often the watcher looks: often enough to stop within a tenth more."""
        return max(0.05, min(self.seconds, self.first) / 10)


class Connections(Protocol):
    connected: int  # connections being served now
    served: int  # connections taken since the daemon started


async def stop_when_idle(
    idle: Idle, connections: Connections, work: trio.Nursery, stop: trio.CancelScope
) -> None:
    """Cancel ``stop`` once ``connections`` and ``work`` (the nursery this watcher runs
    in, besides) have been idle long enough and ``idle.may_stop``. Runs in ``work``."""
    quiet_since = trio.current_time()
    while True:
        await trio.sleep(idle.look_every())
        now = trio.current_time()
        if connections.connected or len(work.child_tasks) > 1:
            quiet_since = now
            continue
        wait = idle.seconds if connections.served else idle.first
        # No await from here to the cancel: nothing connects in between.
        if now - quiet_since >= wait and idle.may_stop():
            stop.cancel()
            return
