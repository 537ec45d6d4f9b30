"""A blob source for the cache's tests: counts its calls, and can hold them at a gate; a
disk cache and a fetcher over it."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import BinaryIO

import trio

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import Fetcher
from providers.digest import Digest
from providers.errors import NotFound

BLOB = Digest("sha256:" + "cd" * 32)
SIZE = 16
DATA = bytes(range(256)) * 2  # 512 bytes: chunks 0-31


class FakeSource:
    """A BlobSource over DATA that records its calls; gated, it waits for ``gate`` to answer."""

    def __init__(self, *, gated: bool = False, failures: list[Exception] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.failures = list(failures or [])
        if not gated:
            self.gate.set()

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(DATA)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        if digest != BLOB:
            raise NotFound(f"blob {digest}")
        with self.lock:
            self.calls.append((offset, length))
            failure = self.failures.pop(0) if self.failures else None
        # A bound on the wait, not a delay: a test that never opens the gate fails.
        assert self.gate.wait(timeout=30), "the gate was never opened"
        if failure is not None:
            raise failure
        return DATA[offset : offset + length]


class StreamingSource(FakeSource):
    """FakeSource that streams a range in ``pieces`` as given: ``(blob offset, length)``
    each; after the ``hold``-th piece it waits for ``go`` (for at most 30 s), and it
    raises ``breaks`` after the last. ``sent`` is set once the caller is done with the
    stream (has read it to its end or closed it): with every piece it took."""

    def __init__(
        self,
        pieces: list[tuple[int, int]] | None = None,
        *,
        hold: int | None = None,
        breaks: Exception | None = None,
    ) -> None:
        super().__init__()
        self.pieces = pieces
        self.hold = hold
        self.go = threading.Event()
        self.breaks = breaks
        self.closed = False
        self.yielded = 0
        self.sent = threading.Event()

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        # What a source read whole gives: all of it at the end.
        return b"".join(data for _, data in self.stream_range(digest, offset, length))

    def stream_range(self, digest: Digest, offset: int, length: int) -> Iterator[tuple[int, bytes]]:
        self.calls.append((offset, length))
        end = min(offset + length, len(DATA))
        pieces = self.pieces or [(at, min(5, end - at)) for at in range(offset, end, 5)]
        try:
            for number, (at, size) in enumerate(pieces):
                if self.hold is not None and number == self.hold:
                    assert self.go.wait(timeout=30), "go was never set"
                self.yielded += 1
                yield at, DATA[at : at + size]
            if self.breaks is not None:
                raise self.breaks
        finally:
            self.closed = True
            self.sent.set()


@contextmanager
def disk_cache(root: Path, chunks: int = 64) -> Iterator[DiskCache]:
    root.mkdir(parents=True, exist_ok=True)
    with DiskCache.open(root, chunks * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
        yield cache


@asynccontextmanager
async def fetcher(tmp_path: Path, **options: object) -> AsyncIterator[Fetcher]:
    """A Fetcher whose nursery is waited for on the way out: every fetch has finished after."""
    with disk_cache(tmp_path / "cache") as cache:
        async with trio.open_nursery() as nursery:
            yield Fetcher(cache, nursery, **options)  # type: ignore[arg-type]
