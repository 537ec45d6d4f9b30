"""A lazy provision of an image whose layer another image brought is held to its own diff_id."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from lazyfs.provision.lazy import adopt_complete
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import DigestMismatch
from providers.manifest import ImageManifest, Layer

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _sha(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def _layer_bytes() -> tuple[bytes, Digest]:
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as out:
        info = tarfile.TarInfo("hello")
        info.size = 5
        out.addfile(info, io.BytesIO(b"hello"))
    return gzip.compress(tar.getvalue(), mtime=0), _sha(tar.getvalue())


def _image(layer: Layer) -> ImageManifest:
    return ImageManifest("registry.test/app:1", _sha(b"manifest"), (layer,))


def test_a_stored_layer_is_held_to_each_image_s_own_diff_id(tmp_path: Path) -> None:
    blob, diff_id = _layer_bytes()
    store = Store(tmp_path / "store")
    honest = Layer(_sha(blob), GZIP, len(blob), diff_id)
    store.ingest(honest, lambda: io.BytesIO(blob))
    cache_dir = tmp_path / "cache"  # holds nothing: only stored layers are in question

    assert adopt_complete(store, cache_dir, _image(honest)) == []

    lying = Layer(honest.digest, GZIP, len(blob), _sha(b"another tar"))
    with pytest.raises(DigestMismatch, match="diff_id"):
        adopt_complete(store, cache_dir, _image(lying))
