"""``stored_image``: a lazy start takes a stored record only when each layer it reads by
range has here what its mount opens it from; otherwise it is resolved again, as before.

(That a record with such layers is found, and mounts with its registry gone, is shown
end to end: tests/registry/test_lazy_stored.py, tests/estargz/test_lazy_stored.py.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lazyfs.images.docker_stored import stored_image
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.manifest import (
    INDEX_BLOB_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    ImageManifest,
    Layer,
)

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REFERENCE = "registry.test/app:1"
PLATFORM = "linux/amd64"


def _digest(text: str) -> Digest:
    return Digest("sha256:" + hashlib.sha256(text.encode()).hexdigest())


def _record(store: Store, *layers: Layer) -> None:
    store.put_image(ImageManifest(REFERENCE, _digest("manifest"), layers, platform=PLATFORM))


def _store_blob(store: Store, data: bytes) -> Layer:
    layer = Layer(Digest("sha256:" + hashlib.sha256(data).hexdigest()), GZIP, len(data))
    path = store.blob_path(layer.digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return layer


ESTARGZ = Layer(_digest("esgz"), GZIP, 10, annotations=((TOC_DIGEST_ANNOTATION, _digest("toc")),))
PUBLISHED = Layer(_digest("pub"), GZIP, 10, annotations=((INDEX_BLOB_ANNOTATION, _digest("ix")),))


@pytest.mark.parametrize("remote", [ESTARGZ, PUBLISHED], ids=["estargz", "published"])
@pytest.mark.parametrize("trust", [True, False])
def test_a_lazy_layer_with_no_index_here_is_not_found(
    remote: Layer, trust: bool, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    _record(store, _store_blob(store, b"base"), remote)
    assert stored_image(store, REFERENCE, PLATFORM, lazy=True, trust_published=trust) is None


def test_a_layer_not_read_by_range_needs_its_blob(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _record(store, Layer(_digest("plain"), GZIP, 10))
    assert stored_image(store, REFERENCE, PLATFORM, lazy=True, trust_published=True) is None


def test_with_every_blob_here_it_is_found_lazy_or_not(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _record(store, _store_blob(store, b"base"), _store_blob(store, b"top"))
    for lazy in (True, False):
        found = stored_image(store, REFERENCE, PLATFORM, lazy=lazy, trust_published=False)
        assert found is not None and len(found.layers) == 2
