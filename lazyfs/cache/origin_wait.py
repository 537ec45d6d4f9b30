"""The background fetches of one origin's blobs wait for it together while it is down.

Why: a background fetch whose origin fails for now (out of reach,
overloaded: ``TemporaryFailure``, after the registry client's own retries)
waits and tries again (``lazyfs.cache.background``). Were each blob to wait
on its own schedule, N blobs queued from one registry would make N
requests a round to a server that is already failing: more load on an
overloaded registry, and on Docker Hub each request counts against the
rate limit that may be why it answers 429. So the waiting is the
origin's. Once a blob's fetch from it fails for now, the origin is down
until its next try; a blob of it whose turn comes before then does not ask
it but waits for that time, or until the origin answers again (then it
goes on at once), and the first blob whose turn comes after that time asks
for them all: one request a round however many blobs wait.

The wait before the next try is the one the origin's failures in a row
give (``lazyfs.cache.room.room_wait``: 1 s doubling to a minute),
whichever blob asked, or longer when the server's answer asked for longer
(``Retry-After``, carried as ``TemporaryFailure.retry_after``; at most
``RETRY_AFTER_MOST``). Each
failure of the origin since it last answered (bytes, or a refusal for
good) counts as a try of every blob waiting for it, so an outage ends
every blob's fetch after ``ROOM_TRIES`` rounds, as it ended one alone,
and an origin that answers between failures (near a rate limit) ends
none. Blobs of other origins are not held.

An origin is a registry host, with its mirrors (its repositories fail together),
a daemon handle, or, for a job that names none, its blob source. What is
known of it is kept while blobs of it are queued, and forgotten with the
last: an origin asked again an hour later starts afresh. In the trio
thread only; no I/O.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Hashable
from dataclasses import dataclass, field

import trio

from lazyfs.cache.room import no_room, room_wait
from lazyfs.cache.values import HandleOrigin, Origin, RegistryOrigin
from providers.errors import LazyfsError, TemporaryFailure
from providers.source import BlobSource

# The longest wait a server's Retry-After is taken at: a registry's rate limit
# window is a minute or an hour's share of one, and a header saying a day is
# more likely a mistake than a plan; later tries keep asking it anyway.
RETRY_AFTER_MOST = 600.0


def awaited_by(error: BaseException) -> str | None:
    """What a background fetch that failed with ``error`` waits for, to go on by itself;
    None when trying again mends nothing (``lazyfs.cache.background``)."""
    if no_room(error):
        return "room in the cache"
    if isinstance(error, TemporaryFailure):  # and Unreached, a mirror or registry not there
        return "its origin"
    return None


def origin_key(origin: Origin | None, source: BlobSource) -> Hashable:
    """What the blobs of one origin share: the host, the handle, or else the source."""
    if isinstance(origin, RegistryOrigin):
        return ("registry", origin.host)
    if isinstance(origin, HandleOrigin):
        return ("handle", origin.handle)
    return ("source", id(source))


@dataclass
class _Origin:
    in_row: int = 0  # failures since it last answered: the schedule's, and every blob's, tries
    next_try: float = -math.inf  # trio time; down until then: no blob asks it
    error: TemporaryFailure | None = None  # the last failure, while down
    back: trio.Event = field(default_factory=trio.Event)  # set when it answers again


class OriginWaits:
    """Every origin with a background fetch queued, and whether it is down; ``first``:
    seconds before its first try again."""

    def __init__(self, first: float) -> None:
        self.first = first
        # Held by the blobs' turns alone: an origin no blob is queued from is forgotten.
        self._origins: weakref.WeakValueDictionary[Hashable, _Origin] = (
            weakref.WeakValueDictionary()
        )

    def turn(self, key: Hashable) -> Turn:
        """One blob's view of the origin ``key`` (``origin_key``), while the blob holds it."""
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        return Turn(origin, self.first)


class Turn:
    """One blob's background fetch as one of its origin's."""

    def __init__(self, origin: _Origin, first: float) -> None:
        self._origin = origin
        self._first = first

    @property
    def in_row(self) -> int:
        """The origin's failures for now since it last answered: each a try of every blob
        waiting for it (a flaky origin, answering between failures, wears out none)."""
        return self._origin.in_row

    @property
    def down(self) -> TemporaryFailure | None:
        """The origin's last failure while its next try is not due yet: the blob waits."""
        origin = self._origin
        return origin.error if trio.current_time() < origin.next_try else None

    async def wait(self) -> None:
        """Until the origin's next try is due, or it answers again before that."""
        with trio.move_on_at(self._origin.next_try):
            await self._origin.back.wait()

    def tried(self, error: BaseException | None, came: bool = False) -> float | None:
        """The blob's fetch ended, with ``error`` (None: the blob's bytes), some of its
        bytes having ``came`` first. Failed for now, the origin is down until its next
        try: returns the seconds to it, the schedule's for its failures in a row (counted
        from this one when bytes came), or as long as its answer asked when that is
        longer. Answered (the bytes, or a refusal for good), it is up, and the blobs
        waiting for it go on. Any other error says nothing of it. None but for a failure
        for now."""
        origin = self._origin
        if isinstance(error, TemporaryFailure):
            if came:
                origin.in_row = 0  # it answered before it failed: a new row of failures
            asked = min(error.retry_after or 0.0, RETRY_AFTER_MOST)
            wait = max(room_wait(origin.in_row, self._first), asked)
            origin.in_row += 1
            origin.error = error
            origin.next_try = trio.current_time() + wait
            return wait
        if error is None or isinstance(error, LazyfsError):
            origin.in_row, origin.error, origin.next_try = 0, None, -math.inf
            origin.back.set()
            origin.back = trio.Event()
        return None
