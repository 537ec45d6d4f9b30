"""The flight of a chunk being fetched, and which chunks of a blob need no new fetch.

Parts of ``lazyfs.cache.flight``'s ``Fetcher``: every reader of a missing
chunk waits on its one ``Flight``, which ``land`` ends; ``InHand`` is what
the planner is told is there already (cached, or in flight).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.layout import ChunkKey
from providers.digest import Digest


@dataclass
class Flight:
    """One chunk's fetch from ``source``: ``done`` is set when it lands, with ``error`` if it
    failed."""

    source: object  # whose origin it goes through: another origin's failure is not a reader's
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


class InHand:
    """The chunks of one blob that need no new fetch: cached, or being fetched."""

    def __init__(self, digest: Digest, flights: dict[ChunkKey, Flight], cache: DiskCache) -> None:
        self._digest = digest
        self._flights = flights
        self._cache = cache

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        key = ChunkKey(self._digest, index)
        return key in self._flights or self._cache.contains(key)


def land(
    registry: dict[ChunkKey, Flight],
    key: ChunkKey,
    flights: dict[ChunkKey, Flight],
    error: BaseException | None,
) -> None:
    """End ``key``'s flight of one fetch (``flights``), waking its readers.

    It leaves ``registry`` (every flight of the Fetcher) only if it is still
    the flight there: the chunk may have been planned again since.
    """
    flight = flights.pop(key, None)
    if flight is None:
        return
    if registry.get(key) is flight:
        del registry[key]
    flight.error = error
    flight.done.set()
