"""Fakes of the providers' interfaces, for tests that need a source and no peer.

``FakeSource`` is an ImageSource and a BlobSource (a ``providers.source.Puller``)
in memory: images by reference, blobs by digest. It keeps the interfaces'
contracts (NotFound for what it does not hold, ranges clamped by
``clamp_range``), so the conformance suites run against it as against the
real sources.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import BinaryIO

from providers.digest import Digest
from providers.errors import NotFound
from providers.manifest import OCI_LAYER_TAR, ImageManifest, Layer, RuntimeConfig
from providers.source import clamp_range


def _digest(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


class FakeSource:
    def __init__(self) -> None:
        self.images: dict[str, ImageManifest] = {}
        self.blobs: dict[Digest, bytes] = {}

    def add_blob(self, data: bytes, media_type: str = OCI_LAYER_TAR) -> Layer:
        """Hold ``data`` as a blob; its descriptor (an uncompressed tar: diff_id = digest)."""
        digest = _digest(data)
        self.blobs[digest] = data
        diff_id = digest if media_type == OCI_LAYER_TAR else None
        return Layer(digest, media_type, len(data), diff_id)

    def add_image(
        self, reference: str, layers: list[bytes], config: RuntimeConfig | None = None
    ) -> ImageManifest:
        """Hold an image of ``layers`` (uncompressed tars, bottom first) under ``reference``."""
        described = tuple(self.add_blob(data) for data in layers)
        digest = _digest(json.dumps([layer.digest for layer in described]).encode())
        image = ImageManifest(reference, digest, described, config or RuntimeConfig())
        self.images[reference] = image
        return image

    def resolve(self, reference: str) -> ImageManifest:
        try:
            return self.images[reference]
        except KeyError:
            raise NotFound(f"image {reference} is not in the fake source") from None

    def _blob(self, digest: Digest) -> bytes:
        try:
            return self.blobs[digest]
        except KeyError:
            raise NotFound(f"blob {digest} is not in the fake source") from None

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self._blob(digest))

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        data = self._blob(digest)
        length = clamp_range(offset, length, len(data))
        return data[offset : offset + length]
