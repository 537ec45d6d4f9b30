"""When a cache daemon with nothing to do stops: ``Idle`` and ``stop_when_idle``.

A daemon a command started (``lazyfs.cache.spawn``) should not outlive its
use by days: every mount it served holds a connection for its whole life
(``lazyfs.cache.client_link`` keeps them), so a daemon with no connection
open and no work in hand has no mount to serve. Work in hand is any task in
the daemon's nursery, each a fetch, a background fetch or a replay's run:
what a mount asked for goes on after it left, and is let finish. The wait
counts from the end of the last connection that asked more than the
daemon's status (``lazyfs cache`` run by a monitor keeps no daemon alive),
and is the shorter ``first`` while none did (the command that started it
failed). Any connection, a status request's too, still puts the stop off by
``first`` at least: a caller told that the daemon answers finds it there
when its mount connects.

Stopping must not race a start of the next daemon: ``Idle.may_stop`` takes
the start lock without waiting (a start in progress means a caller is about
to connect: not idle then), and the process holds it until it has let go of
the cache. A caller that comes meanwhile waits for the lock, then finds no
daemon and starts one. The listener closes and the socket goes at once: a
connect then finds nothing, and one already queued gets its connection
reset, which callers take as no daemon.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

log = logging.getLogger(__name__)


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
    using: int  # of those, the ones that asked more than the daemon's status
    last_active: float  # trio time one last opened or closed
    last_used: float  # trio time the last that asked more than the status ended (-inf)


async def stop_when_idle(
    idle: Idle, connections: Connections, work: trio.Nursery, stop: trio.CancelScope
) -> None:
    """Cancel ``stop`` once ``connections`` and ``work`` (the nursery this watcher runs
    in, besides) have been idle long enough and ``idle.may_stop``. Runs in ``work``."""
    quiet_since = trio.current_time()
    while True:
        await trio.sleep(idle.look_every())
        now = trio.current_time()
        if connections.using or len(work.child_tasks) > 1:
            quiet_since = now
            continue
        if connections.connected:
            continue  # a status request in flight: no use, but not to be cut off either
        # Status requests alone (a start's, ``lazyfs cache``) are no use: the wait
        # counts from the last use, and is the shorter one while there was none. A
        # status request still puts a stop off by the shorter wait at least: a
        # starter it answered has a mount on its way. One that came and went between
        # two looks counts too.
        used = connections.last_used > -math.inf
        wait = idle.seconds if used else idle.first
        unused = now - max(quiet_since, connections.last_used)
        asked = now - max(quiet_since, connections.last_active)
        # No await from here to the cancel. A connection accepted but not yet begun
        # is closed with the listener: its client finds no daemon, as after the
        # socket is gone, and starts one once the start lock is let go.
        if unused >= wait and asked >= min(wait, idle.first) and idle.may_stop():
            log.info("nothing to do for %gs: stopping", wait)
            stop.cancel()
            return
