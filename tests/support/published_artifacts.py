"""Published index artifacts of test layers, and the blobs a reader of them reads.

``artifact_of`` indexes a layer blob as a store would and builds its
artifact (``lazyfs.index.artifact_build``) with checkpoints ``spacing``
apart; ``blobs_of`` gives the blobs a mount reads through it by digest:
the layer and, for gzip, the windows blob.  ``Built`` is a small layer
of three files (or the files given) with its index so published and kept, as
a mount finds it.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable
from pathlib import Path

from lazyfs.index.artifact import LayerArtifact
from lazyfs.index.artifact_build import build_artifact
from lazyfs.index.formats import build_index
from lazyfs.index.published import PublishedData, load_published, store_published
from providers.digest import Digest, digest_bytes
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from tests.support.images import Entry, write_layer

SPACING = 1 << 16


def artifact_of(
    blob: Path, digest: Digest, scratch: Path, *, spacing: int = SPACING
) -> tuple[LayerArtifact, bytes]:
    """The artifact of the layer blob ``blob`` (its digest ``digest``) and its windows blob."""
    scratch.mkdir(parents=True, exist_ok=True)
    index = build_index(digest, blob, scratch)
    built = build_artifact(index, blob, spacing=spacing)
    assert built is not None, "a gzip layer of several members"
    return built


def blobs_of(artifact: LayerArtifact, blob: bytes, windows: bytes) -> dict[Digest, bytes]:
    """The blobs a reader of ``artifact`` reads, by digest."""
    found = {artifact.layer: blob}
    if artifact.windows is not None:
        found[artifact.windows] = windows
    return found


_random = random.Random(5)
FILES = [
    Entry("small", data=b"hello\n"),
    Entry("noise", data=_random.randbytes(400_000)),
    Entry("text", data=b"".join(b"line %d of it\n" % i for i in range(40_000))),
]
BLOB = Digest("sha256:" + "e" * 64)  # the index blob's digest: only a name here


class Built:
    """A layer of ``FILES`` (gzip when ``compress``, else tar; ``compress`` may be the
    compressor), its index published as
    ``BLOB`` and kept under ``layers_dir``: the layer, its blobs and its published data."""

    def __init__(
        self,
        tmp: Path,
        compress: bool | Callable[[bytes], bytes],
        files: list[Entry] = FILES,
        spacing: int = SPACING,
    ) -> None:
        self.tar = write_layer(files, tmp / "layer.tar").read_bytes()
        if callable(compress):  # a gzip stream of the test's making
            self.blob = compress(self.tar)
        else:
            self.blob = gzip.compress(self.tar) if compress else self.tar
        path = tmp / "blob"
        path.write_bytes(self.blob)
        self.digest = digest_bytes(self.blob)
        self.artifact, self.windows = artifact_of(
            path, self.digest, tmp / "scratch", spacing=spacing
        )
        self.blobs = blobs_of(self.artifact, self.blob, self.windows)
        self.layers_dir = tmp / "layers"
        store_published(self.layers_dir, BLOB, self.artifact)
        self.layer = Layer(self.digest, "", len(self.blob), None, ((INDEX_BLOB_ANNOTATION, BLOB),))
        found = load_published(self.layers_dir, self.layer)
        assert found is not None
        self.data: PublishedData = found[2]
