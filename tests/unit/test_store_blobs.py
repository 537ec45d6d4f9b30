"""The store as a local blob source: ``StoreBlobs.local_blob`` gives verified files only.

A blob already in the store is its file; a missing one is fetched from the
upstream source, verified on the way in, or is NotFound without one.  Bytes
that are not the blob never reach the store.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from providers.digest import Digest, digest_bytes
from providers.errors import DigestMismatch, NotFound
from providers.manifest import OCI_LAYER_TAR, Layer
from tests.support.blob_sources import MemoryBlobs
from tests.support.images import Entry, write_layer


def layer_blob(tmp_path: Path) -> tuple[Layer, bytes]:
    data = write_layer([Entry("etc", "dir"), Entry("etc/a", data=b"a\n")], tmp_path / "l.tar")
    blob = data.read_bytes()
    return Layer(digest_bytes(blob), OCI_LAYER_TAR, len(blob)), blob


def test_a_stored_blob_is_its_file_and_upstream_is_not_asked(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer, blob = layer_blob(tmp_path)
    store.ingest(layer, lambda: io.BytesIO(blob))
    upstream = MemoryBlobs({})
    path = StoreBlobs(store, upstream).local_blob(layer)
    assert path == store.blob_path(layer.digest)
    assert path.read_bytes() == blob
    assert upstream.opened == []


def test_a_missing_blob_without_upstream_is_not_found(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer, _ = layer_blob(tmp_path)
    with pytest.raises(NotFound, match=layer.digest):
        StoreBlobs(store).local_blob(layer)
    assert not store.has_blob(layer.digest)


def test_a_missing_blob_is_fetched_once_from_upstream(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer, blob = layer_blob(tmp_path)
    upstream = MemoryBlobs({layer.digest: blob})
    blobs = StoreBlobs(store, upstream)
    path = blobs.local_blob(layer)
    assert path.read_bytes() == blob and store.has_blob(layer.digest)
    assert blobs.local_blob(layer) == path
    assert upstream.opened == [layer.digest]


def test_a_fetched_blob_leaves_no_lock_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer, blob = layer_blob(tmp_path)
    StoreBlobs(store, MemoryBlobs({layer.digest: blob})).local_blob(layer)
    other = Layer(digest_bytes(b"other"), OCI_LAYER_TAR, len(blob))
    with pytest.raises(DigestMismatch):  # nor a failed one
        StoreBlobs(store, MemoryBlobs({other.digest: blob})).local_blob(other)
    assert list(store.locks.iterdir()) == []


def test_wrong_bytes_upstream_never_reach_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer, blob = layer_blob(tmp_path)
    upstream = MemoryBlobs({layer.digest: blob[:-1] + b"!"})
    with pytest.raises(DigestMismatch):
        StoreBlobs(store, upstream).local_blob(layer)
    assert not store.has_blob(layer.digest)
    assert list(store.tmp.iterdir()) == []


def test_a_range_read_is_whole_when_the_system_reads_it_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    layer, blob = layer_blob(tmp_path)
    store.ingest(layer, lambda: io.BytesIO(blob))
    real = os.pread

    def short(fd: int, length: int, offset: int) -> bytes:
        # As a signal or Linux's ~2 GiB cap per call can make it: less than asked.
        return real(fd, min(length, 100), offset)

    monkeypatch.setattr(os, "pread", short)
    blobs = StoreBlobs(store)
    assert blobs.read_range(layer.digest, 10, 1000) == blob[10:1010]
    assert blobs.read_range(layer.digest, len(blob) - 50, 1000) == blob[-50:]


class Poisoned(MemoryBlobs):
    """A cache every origin's fetches land in, holding ``bad`` bytes for the blob whatever
    is evicted; read again through the reader's own origin, the blob's bytes."""

    def __init__(self, blobs: dict[Digest, bytes], bad: bytes) -> None:
        super().__init__(blobs)
        self.bad = bad
        self.evicted: list[tuple[int, int]] = []

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.bad)

    def evict(self, digest: Digest, offset: int, length: int, reason: str) -> int:
        self.evicted.append((offset, length))
        return 1

    def read_again(self, digest: Digest, offset: int, length: int) -> bytes:
        return self.blobs[digest][offset : offset + length]


def test_a_blob_another_origin_left_in_the_cache_is_fetched_again_through_ours(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store")
    layer, blob = layer_blob(tmp_path)
    upstream = Poisoned({layer.digest: blob}, blob[:-1] + b"!")
    path = StoreBlobs(store, upstream).local_blob(layer)
    assert path.read_bytes() == blob
    assert upstream.evicted == [(0, layer.size)]
