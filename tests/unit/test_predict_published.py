"""The program and the startup files asked for from published indexes, before the mount serves.

``program_needs`` must ask for everything a mount's reader of the layers
(``PublishedLayers``, holding files to their tar headers) reads to serve
the program and the startup files, and not for a file the union hides.
A source that has only the asked ranges proves both.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path
from typing import BinaryIO

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers
from lazyfs.fs.predict_published import program_needs
from lazyfs.index.artifact import LayerArtifact
from lazyfs.index.published import forget_kept, keep_here, load_published, store_published
from providers.digest import Digest, digest_bytes
from providers.errors import NotFound
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from tests.support.images import Entry, opaque, whiteout, write_layer
from tests.support.published_artifacts import artifact_of, blobs_of

SPACING = 1 << 16  # many intervals: a file spans several, the asks must be exact
CANDIDATES = ["/usr/local/bin/python3", "/usr/bin/gone", "/usr/bin/python3"]
_random = random.Random(13)
PROGRAM = _random.randbytes(400_000)
LOWER = [
    Entry("etc", "dir", mode=0o755),
    Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n" * 40),
    Entry("etc/group", data=b"root:x:0:\n" * 40),
    Entry("filler-1", data=_random.randbytes(300_000)),
    Entry("usr", "dir", mode=0o755),
    Entry("usr/bin", "dir", mode=0o755),
    Entry("usr/bin/gone", data=_random.randbytes(90_000), mode=0o755),
    Entry("filler-2", data=_random.randbytes(300_000)),
    Entry("usr/bin/python3.11", data=PROGRAM, mode=0o755),
    Entry("filler-3", data=_random.randbytes(300_000)),
    Entry("usr/local", "dir", mode=0o755),
    Entry("usr/local/bin", "dir", mode=0o755),
    Entry("usr/local/bin/python3", data=_random.randbytes(60_000), mode=0o755),
]
UPPER = [
    Entry("usr", "dir", mode=0o755),
    Entry("usr/bin", "dir", mode=0o755),
    whiteout("usr/bin/gone"),  # the second candidate, hidden
    Entry("usr/bin/python3", "symlink", target="python3.11", mode=0o777),
    Entry("usr/local", "dir", mode=0o755),
    opaque("usr/local"),  # the first candidate, hidden with its directory's lower contents
    Entry("top-file", data=b"top\n"),
]
BLOBS = [Digest("sha256:" + c * 64) for c in "ab"]  # the index blobs' digests: names only


class _Published:
    """The layers bottom first, each gzip with its index published and kept."""

    def __init__(self, tmp: Path) -> None:
        self.layers_dir = tmp / "layers"
        self.layers: list[Layer] = []
        self.tars: dict[Digest, bytes] = {}
        self.artifacts: list[LayerArtifact] = []
        self.blobs: dict[Digest, bytes] = {}
        for number, (entries, index_blob) in enumerate(zip((LOWER, UPPER), BLOBS, strict=True)):
            tar = write_layer(entries, tmp / f"layer{number}.tar").read_bytes()
            blob = gzip.compress(tar)
            (tmp / f"blob{number}").write_bytes(blob)
            digest = digest_bytes(blob)
            artifact, windows = artifact_of(
                tmp / f"blob{number}", digest, tmp / f"scratch{number}", spacing=SPACING
            )
            self.artifacts.append(artifact)
            self.blobs |= blobs_of(artifact, blob, windows)
            self.tars[digest] = tar
            annotations = ((INDEX_BLOB_ANNOTATION, index_blob),)
            self.layers.append(Layer(digest, "", len(blob), None, annotations))

    def store(self) -> None:
        for artifact, index_blob in zip(self.artifacts, BLOBS, strict=True):
            store_published(self.layers_dir, index_blob, artifact)

    def reader(self, needs: list[tuple[Digest, int, int]]) -> tuple[PublishedLayers, Layer]:
        """A mount's reader of the lower layer, its blobs holding only ``needs``."""
        lower = self.layers[0]
        found = load_published(self.layers_dir, lower)
        assert found is not None
        index, _, data = found
        source = _Only(self.blobs, needs)
        reader = PublishedLayers(
            {lower.digest: data}, source, entries={lower.digest: lambda: index.entries}
        )
        return reader, lower


class _Only:
    """Blobs of which only ``needs`` can be read: anything else is a miss no one asked for."""

    def __init__(self, blobs: dict[Digest, bytes], needs: list[tuple[Digest, int, int]]) -> None:
        self.blobs, self.needs = blobs, needs

    def open(self, digest: Digest) -> BinaryIO:
        raise NotFound(f"{digest} was not asked for whole")

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        for blob, start, size in self.needs:
            if blob == digest and start <= offset and offset + length <= start + size:
                return self.blobs[digest][offset : offset + length]
        raise NotFound(f"{digest} [{offset}, +{length}) was not asked for")


def _read(reader: PublishedLayers, layer: Layer, index_dir: Path, path: str) -> bytes:
    """The file ``path`` of ``layer``, read as the mount reads it."""
    found = load_published(index_dir, layer)
    assert found is not None
    entry = next(e for e in found[0].entries if "/".join(e.path) == path)
    return reader.read_range(layer.digest, entry.offset, entry.size)


def test_the_asked_ranges_serve_the_program_and_the_startup_files(tmp_path: Path) -> None:
    image = _Published(tmp_path)
    image.store()
    found = program_needs(image.layers_dir, image.layers, CANDIDATES)
    assert found is not None
    data, needs = found
    assert set(data) == {layer.digest for layer in image.layers}
    reader, lower = image.reader(needs)
    try:
        assert _read(reader, lower, image.layers_dir, "usr/bin/python3.11") == PROGRAM
        for path in ("etc/passwd", "etc/group"):
            want = next(e.data for e in LOWER if e.path == path)
            assert _read(reader, lower, image.layers_dir, path) == want
        # Hidden by the upper layer: not asked for, so a read of them misses.
        for path in ("usr/bin/gone", "usr/local/bin/python3"):
            with pytest.raises(OSError):
                _read(reader, lower, image.layers_dir, path)
    finally:
        reader.close()
    # Far less than the layers: only what those files need.
    asked = sum(length for _, _, length in needs)
    assert asked < sum(len(blob) for blob in image.blobs.values()) // 2


def test_nothing_is_asked_unless_every_layer_has_its_index_kept(tmp_path: Path) -> None:
    image = _Published(tmp_path)
    store_published(image.layers_dir, BLOBS[0], image.artifacts[0])  # the lower one only
    assert program_needs(image.layers_dir, image.layers, CANDIDATES) is None
    image.store()
    assert program_needs(image.layers_dir, image.layers, []) is None
    plain = Layer(image.layers[1].digest, "", image.layers[1].size)  # names no index
    assert program_needs(image.layers_dir, [image.layers[0], plain], CANDIDATES) is None


def test_indexes_kept_by_this_process_are_used_once_without_reading_them(
    tmp_path: Path,
) -> None:
    image = _Published(tmp_path)
    try:
        for layer, index_blob, artifact in zip(image.layers, BLOBS, image.artifacts, strict=True):
            keep_here(layer, index_blob, artifact)
        # Nothing in the store: what this process holds is all there is.
        found = program_needs(image.layers_dir, image.layers, CANDIDATES)
        assert found is not None and found[1]
        image.store()
        reader, _ = image.reader(found[1])
        reader.close()
        # Taken: a second look reads the store, as a start that kept nothing does.
        (tmp_path / "moved").mkdir()
        assert program_needs(tmp_path / "moved", image.layers, CANDIDATES) is None
        keep_here(image.layers[0], BLOBS[0], image.artifacts[0])
        forget_kept()
        assert program_needs(tmp_path / "moved", image.layers[:1], CANDIDATES) is None
    finally:
        forget_kept()
