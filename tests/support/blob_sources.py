"""Blob sources for tests: bytes in memory, and layer files a test wrote.

``MemoryBlobs`` is an upstream ``BlobSource`` that counts what it was asked
to open; ``LocalFiles`` is a ``LocalBlobSource`` over files, for backends
driven without a store.  Neither verifies: the test made the bytes.
``CountingBlobs`` wraps any ``BlobSource`` and records its range reads.
``store_files`` puts layer files in a real store, for what reads a store.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from backends.apply import LayerFile
from lazyfs.blobs.trace_run import ReadWatcher
from lazyfs.store.disk import Store
from providers.digest import Digest, digest_bytes
from providers.errors import NotFound
from providers.manifest import OCI_LAYER_TAR, Layer
from providers.source import BlobSource


def _range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"negative range {offset}+{length}")


class MemoryBlobs:
    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        self.blobs = blobs
        self.opened: list[Digest] = []

    def _bytes(self, digest: Digest) -> bytes:
        try:
            return self.blobs[digest]
        except KeyError:
            raise NotFound(f"blob {digest} is not here") from None

    def open(self, digest: Digest) -> BinaryIO:
        self.opened.append(digest)
        return io.BytesIO(self._bytes(digest))

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        _range(offset, length)
        return self._bytes(digest)[offset : offset + length]


class Prefetching(MemoryBlobs):
    """A caching source: what it was asked to prefetch, and read, in order."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        super().__init__(blobs)
        self.events: list[tuple[str, Digest, int, int]] = []

    def prefetch(self, digest: Digest, offset: int, length: int) -> int:
        self.events.append(("prefetch", digest, offset, length))
        return 1

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.events.append(("read", digest, offset, length))
        return super().read_range(digest, offset, length)


class Watched(MemoryBlobs):
    """A blob source that tells its watcher every range read, as the cache client does;
    ``fetched`` lists them too.  ``replaying``: the ranges of a trace replayed, as the
    cache client has them."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        super().__init__(blobs)
        self.watcher: ReadWatcher | None = None
        self.replaying: list[tuple[Digest, list[tuple[int, int]]]] = []
        self.fetched: list[tuple[Digest, int, int]] = []

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.fetched.append((digest, offset, length))
        if self.watcher is not None:
            self.watcher.read(digest, offset, length)
        return super().read_range(digest, offset, length)


class CountingBlobs:
    """``inner``, with every range read recorded as (digest, offset, bytes returned)."""

    def __init__(self, inner: BlobSource) -> None:
        self.inner = inner
        self.reads: list[tuple[Digest, int, int]] = []

    def open(self, digest: Digest) -> BinaryIO:
        raise AssertionError(f"blob {digest} opened whole; only ranges are expected")

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        data = self.inner.read_range(digest, offset, length)
        self.reads.append((digest, offset, len(data)))
        return data

    @property
    def bytes_read(self) -> int:
        return sum(length for _, _, length in self.reads)


class LocalFiles:
    def __init__(self, files: Sequence[LayerFile]) -> None:
        self.files = list(files)
        self.paths = {file.digest: file.path for file in files}

    def _path(self, digest: Digest) -> Path:
        try:
            return self.paths[digest]
        except KeyError:
            raise NotFound(f"blob {digest} is not here") from None

    def open(self, digest: Digest) -> BinaryIO:
        return self._path(digest).open("rb")

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        _range(offset, length)
        with self.open(digest) as stream:
            stream.seek(offset)
            return stream.read(length)

    def local_blob(self, layer: Layer) -> Path:
        return self._path(layer.digest)

    def layers(self) -> list[Layer]:
        """The files as layer descriptors, in the order given (a layer twice too)."""
        return [Layer(f.digest, OCI_LAYER_TAR, f.path.stat().st_size) for f in self.files]


def store_files(store: Store, paths: Sequence[Path]) -> list[Layer]:
    """The layer blob files at ``paths`` put in ``store`` (verified as any), as descriptors."""
    layers = []
    for path in paths:
        data = path.read_bytes()
        layer = Layer(digest_bytes(data), OCI_LAYER_TAR, len(data))
        store.ingest(layer, lambda: io.BytesIO(data))  # noqa: B023  (called at once)
        layers.append(layer)
    return layers
