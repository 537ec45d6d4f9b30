"""The adopting process outlasts every wait of the daemon's background fetch.

A background fetch whose origin is out of reach, or whose cache disk has no
room, waits and goes on by itself (``lazyfs.cache.background``, on the
schedule of ``lazyfs.cache.room``), its blob still fetching; the process
that copies the image's layers into the store (``lazyfs.provision.adopt``)
gives up once no byte arrived for ``PATIENCE_SECONDS``. Were its patience
shorter than the daemon's waits, a layer completed after a long outage
would stay in the cache, read through the daemon, until a later start.
"""

from __future__ import annotations

from lazyfs.cache.room import ROOM_TRIES, room_wait
from lazyfs.provision.adopt import PATIENCE_SECONDS


def test_patience_outlasts_the_background_fetch_waits() -> None:
    waited = sum(room_wait(tries) for tries in range(ROOM_TRIES))
    assert waited < PATIENCE_SECONDS, (waited, PATIENCE_SECONDS)
