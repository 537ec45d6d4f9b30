"""The store as a blob source: verified blobs by digest, whole, by range, or as a file.

``StoreBlobs`` is what backends are given (``providers.source.LocalBlobSource``).
Every blob it serves was verified when it entered the store (``Store.ingest``),
so reading it needs no check. A blob that is not in the store is fetched from
``upstream`` when there is one (verified on the way in, as every ingest is),
else it is NotFound. An upstream that keeps what it reads for every origin
(``Evicting``: the cache daemon's client) may have another repository's bytes
for the digest: fetched again after a mismatch, the blob is dropped from it
and read through the reader's own origin alone (``read_again``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import NotFound
from providers.fileio import pread_all
from providers.manifest import Layer
from providers.source import BlobSource, Evicting, RangeStream


class StoreBlobs:
    def __init__(self, store: Store, upstream: BlobSource | None = None) -> None:
        self.store = store
        self.upstream = upstream

    def open(self, digest: Digest) -> BinaryIO:
        try:
            return open(self.store.blob_path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store at {self.store.root}") from None

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"negative range {offset}+{length}")
        with self.open(digest) as stream:
            # Clamped first: pread allocates all it is asked for.
            length = max(0, min(length, os.fstat(stream.fileno()).st_size - offset))
            # Whole: one pread may return less (a signal; Linux moves at most ~2 GiB a call).
            return pread_all(stream.fileno(), length, offset)

    def local_blob(self, layer: Layer) -> Path:
        path = self.store.blob_path(layer.digest)
        if path.is_file():
            return path
        upstream = self.upstream
        if upstream is None:
            raise NotFound(f"blob {layer.digest} is not in the store at {self.store.root}")
        again = [False]  # the next open follows a mismatch

        def opener() -> BinaryIO:
            if again[0] and isinstance(upstream, Evicting):
                upstream.evict(layer.digest, 0, layer.size, "the blob did not match its digest")
                return io.BufferedReader(RangeStream(upstream.read_again, layer.digest), 1 << 20)
            again[0] = True
            return upstream.open(layer.digest)

        return self.store.ingest(layer, opener)
