"""Made once, however many threads want it: a span fetched, an interval inflated.

A reader of layers through their published indexes
(``lazyfs.blobs.gzip_remote``) is read by several threads at once (the
mount's chunk cache, its read-ahead): two that miss the same span, or the
same interval, would fetch or inflate it twice.  ``Once.get`` has the first
make it and the others wait for it, then look again (the maker may have
failed: then the next one tries).  ``Spans`` keeps the verified spans so
made, least recently used out first, counting their bytes exactly;
``mismatch`` says why a span is not what its index promised.
Blocking and thread-safe.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from lazyfs.index.artifact import Span
from providers.digest import Digest
from providers.errors import DigestMismatch

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
            # A maker may have kept it and let go of the key between our look and our
            # claim: looked for again now that no one else can be making it.
            found = find()
            return found if found is not None else make()
        finally:
            with self._lock:
                del self._making[key]
            done.set()


class Spans:
    """Verified spans by (layer, number), least recently used out first while past
    ``max_bytes`` (the last kept stays, whatever its size)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[Digest, int], bytes] = OrderedDict()
        self._bytes = 0

    @property
    def kept_bytes(self) -> int:
        """The bytes of the spans kept now."""
        with self._lock:
            return self._bytes

    def get(self, key: tuple[Digest, int]) -> bytes | None:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def put(self, key: tuple[Digest, int], piece: bytes) -> None:
        with self._lock:
            old = self._kept.pop(key, None)  # kept again: its old bytes are not counted twice
            self._bytes -= len(old) if old is not None else 0
            self._kept[key] = piece
            self._bytes += len(piece)
            while self._bytes > self.max_bytes and len(self._kept) > 1:
                _, dropped = self._kept.popitem(last=False)
                self._bytes -= len(dropped)

    def holds(self, layer: Digest, starts: Sequence[int], offset: int, length: int) -> bool:
        """Whether every span of ``layer`` (which start at ``starts``) that the blob range
        ``[offset, offset + length)`` reaches is kept now."""
        first = bisect.bisect_right(starts, offset) - 1
        last = bisect.bisect_right(starts, offset + length - 1) - 1
        with self._lock:
            return all((layer, n) in self._kept for n in range(first, last + 1))


def mismatch(digest: Digest, span: Span, piece: bytes, what: str) -> DigestMismatch | None:
    """None when ``piece`` is the span its published index promised, else why not."""
    got = hashlib.sha256(piece).hexdigest()
    if len(piece) == span.length and got == span.sha256:
        return None
    return DigestMismatch(
        f"layer {digest}: {what} [{span.offset}, {span.offset + span.length}) does not match"
        " its published index",
        expected=f"sha256 {span.sha256} ({span.length} bytes)",
        actual=f"sha256 {got} ({len(piece)} bytes)",
    )
