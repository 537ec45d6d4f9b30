"""What a cache client tells of its reads.

``ReadWatcher`` is what a client tells every range it reads, before it is
served (a learned prefetch trace's recorder, ``lazyfs.blobs.trace_run``).
``CacheClient.open``'s stream is ``providers.source.RangeStream``.
"""

from __future__ import annotations

from typing import Protocol

from providers.digest import Digest


class ReadWatcher(Protocol):
    def read(self, digest: Digest, offset: int, length: int) -> None:
        """Blob bytes [offset, offset + length) are being read. Called from any
        reader's thread; quick, never raises."""
        ...
