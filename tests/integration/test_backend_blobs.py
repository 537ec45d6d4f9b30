"""Copy, bind and overlay build from layer descriptors and a blob source, not from paths.

Each asks its ``LocalBlobSource`` for every layer as a verified local file
before it builds anything: a layer missing from the store is fetched through
the store's upstream, and one nobody has fails the provision with NotFound
before a rootfs or an extracted layer exists.  Every rootfs is destroyed in a
``finally``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends.base import Backend
from backends.names import make_backend
from backends.overlay import overlay_usable
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from providers.digest import digest_bytes
from providers.errors import NotFound
from providers.manifest import OCI_LAYER_TAR, Layer
from tests.support.blob_sources import MemoryBlobs
from tests.support.images import Entry, write_layer

pytestmark = pytest.mark.integration

BACKENDS = ["copy", "bind", "overlay"]


def backend_for(name: str, store: Store) -> Backend:
    if name != "copy" and os.geteuid() != 0:
        pytest.skip(f"the {name} backend needs root")
    if name == "overlay" and not overlay_usable(store.tmp):
        pytest.skip("overlayfs is not usable here")
    return make_backend(name, store=store.root, layers_dir=store.layers, tmp_dir=store.tmp)


def layer_blob(tmp_path: Path) -> tuple[Layer, bytes]:
    data = write_layer([Entry("etc", "dir"), Entry("etc/a", data=b"a\n")], tmp_path / "l.tar")
    blob = data.read_bytes()
    return Layer(digest_bytes(blob), OCI_LAYER_TAR, len(blob)), blob


def rootfs_path(tmp_path: Path) -> Path:
    rootfs = tmp_path / "c" / "rootfses" / "r"
    rootfs.parent.mkdir(parents=True)
    return rootfs


@pytest.mark.parametrize("name", BACKENDS)
def test_a_layer_not_in_the_store_is_fetched_before_the_build(name: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    backend = backend_for(name, store)
    layer, blob = layer_blob(tmp_path)
    upstream = MemoryBlobs({layer.digest: blob})
    rootfs = rootfs_path(tmp_path)
    try:
        backend.provision([layer], StoreBlobs(store, upstream), rootfs, writable=name == "copy")
        assert (rootfs / "etc" / "a").read_bytes() == b"a\n"
    finally:
        backend.destroy(rootfs)
    assert upstream.opened == [layer.digest]
    assert store.has_blob(layer.digest)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_layer_nobody_has_fails_before_anything_is_built(name: str, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    backend = backend_for(name, store)
    layer, _ = layer_blob(tmp_path)
    rootfs = rootfs_path(tmp_path)
    try:
        with pytest.raises(NotFound, match=layer.digest):
            backend.provision([layer], StoreBlobs(store, MemoryBlobs({})), rootfs, writable=False)
        assert not os.path.lexists(rootfs)
        assert list(store.layers.iterdir()) == []
    finally:
        backend.destroy(rootfs)
