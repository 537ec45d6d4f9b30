"""Made once, however many threads want it: a span fetched, an interval inflated.

A reader of layers through their published indexes
(``lazyfs.blobs.gzip_remote``) is read by several threads at once (the
mount's chunk cache, its read-ahead): two that miss the same span, or the
same interval, would fetch or inflate it twice.  ``Once.get`` has the first
make it and the others wait for it, then look again (the maker may have
failed: then the next one tries).  Blocking and thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class Once(Generic[Value]):
    """Values by key, each made by one thread at a time while the others wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._making: dict[Hashable, threading.Event] = {}

    def get(
        self, key: Hashable, find: Callable[[], Value | None], make: Callable[[], Value]
    ) -> Value:
        """``find()`` if it has the value; else ``make()``, or wait for the thread making it.

        ``make`` keeps what it made where ``find`` looks (its own cache);
        an exception it raises is the caller's, and the waiters try again.
        """
        while True:
            found = find()
            if found is not None:
                return found
            with self._lock:
                waiting = self._making.get(key)
                if waiting is None:
                    done = self._making[key] = threading.Event()
                    break
            waiting.wait()  # then look again: that thread may have failed
        try:
            return make()
        finally:
            with self._lock:
                del self._making[key]
            done.set()
