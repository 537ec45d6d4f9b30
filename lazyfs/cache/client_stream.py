"""Reading a blob from its start through a cache client; what a client tells of its reads.

``BlobStream`` is ``CacheClient.open``'s stream: the blob range by range.
``ReadWatcher`` is what a client tells every range it reads, before it is
served (a learned prefetch trace's recorder, ``lazyfs.blobs.trace_run``).
"""

from __future__ import annotations

import io
from typing import Protocol

from providers.digest import Digest


class _Ranges(Protocol):
    def read_range(self, digest: Digest, offset: int, length: int) -> bytes: ...


class ReadWatcher(Protocol):
    def read(self, digest: Digest, offset: int, length: int) -> None:
        """Blob bytes [offset, offset + length) are being read. Called from any
        reader's thread; quick, never raises."""
        ...


class BlobStream(io.RawIOBase):
    """A blob read from its start through the client, range by range (``CacheClient.open``)."""

    def __init__(self, client: _Ranges, digest: Digest) -> None:
        self._client = client
        self._digest = digest
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._client.read_range(self._digest, self._position, len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
