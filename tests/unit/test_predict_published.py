"""The program and the startup files asked for from published indexes, before the mount serves.

``program_plan`` must ask for everything a mount's reader of the layers
(``PublishedLayers``, holding files to their tar headers) reads to serve
the program and the startup files, and not for a file the union hides.
A source that has only the asked ranges proves both.
"""

from __future__ import annotations

import dataclasses
import gzip
import random
from pathlib import Path
from typing import BinaryIO

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers
from lazyfs.cache.remote import RemoteOrigin
from lazyfs.fs.predict_published import (
    ask_program_libraries,
    ask_published_program,
    program_plan,
)
from lazyfs.index.artifact import LayerArtifact
from lazyfs.index.model import IndexEntry, Kind
from lazyfs.index.published import (
    MAX_HELD_ENTRIES,
    forget_kept,
    keep_here,
    load_published,
    store_published,
    take_kept,
)
from providers.digest import Digest, digest_bytes
from providers.errors import NotFound
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from tests.support.blob_sources import Prefetching
from tests.support.elf_files import elf
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

    def __init__(self, tmp: Path, layers: list[list[Entry]] | None = None) -> None:
        self.layers_dir = tmp / "layers"
        self.layers: list[Layer] = []
        self.tars: dict[Digest, bytes] = {}
        self.artifacts: list[LayerArtifact] = []
        self.blobs: dict[Digest, bytes] = {}
        made = [LOWER, UPPER] if layers is None else layers
        for number, (entries, index_blob) in enumerate(zip(made, BLOBS, strict=False)):
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
        for artifact, index_blob in zip(self.artifacts, BLOBS, strict=False):
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
    plan = program_plan(image.layers_dir, image.layers, CANDIDATES)
    assert plan is not None
    needs = plan.needs
    assert set(plan.data) == {layer.digest for layer in image.layers}
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


def test_nothing_is_asked_unless_every_layer_has_its_index_kept(tmp_path: Path) -> None:
    image = _Published(tmp_path)
    store_published(image.layers_dir, BLOBS[0], image.artifacts[0])  # the lower one only
    assert program_plan(image.layers_dir, image.layers, CANDIDATES) is None
    image.store()
    assert program_plan(image.layers_dir, image.layers, []) is None
    plain = Layer(image.layers[1].digest, "", image.layers[1].size)  # names no index
    assert program_plan(image.layers_dir, [image.layers[0], plain], CANDIDATES) is None


def test_indexes_kept_by_this_process_are_used_once_without_reading_them(
    tmp_path: Path,
) -> None:
    image = _Published(tmp_path)
    try:
        for layer, index_blob, artifact in zip(image.layers, BLOBS, image.artifacts, strict=True):
            keep_here(layer, index_blob, artifact)
        # Nothing in the store: what this process holds is all there is.
        plan = program_plan(image.layers_dir, image.layers, CANDIDATES)
        assert plan is not None and plan.needs
        image.store()
        reader, _ = image.reader(plan.needs)
        reader.close()
        # Taken: a second look reads the store, as a start that kept nothing does.
        (tmp_path / "moved").mkdir()
        assert program_plan(tmp_path / "moved", image.layers, CANDIDATES) is None
        keep_here(image.layers[0], BLOBS[0], image.artifacts[0])
        forget_kept()
        assert program_plan(tmp_path / "moved", image.layers[:1], CANDIDATES) is None
    finally:
        forget_kept()


class _Recording(Prefetching):
    """A cache client: the blobs, what it was asked to fetch, and whether it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


def fill(name: str) -> Entry:
    return Entry(name, data=_random.randbytes(300_000))


def test_what_the_program_loads_is_asked_for_once_its_headers_are_read(tmp_path: Path) -> None:
    program = elf(b"/lib64/ld.so", [b"libfoo.so.1", b"libc.so.6", b"libnone.so"], b"/opt/lib")
    files = [
        Entry("bin", "dir", mode=0o755),
        Entry("bin/prog", data=program.data + _random.randbytes(200_000), mode=0o755),
        fill("filler-1"),
        Entry("lib64", "dir", mode=0o755),
        Entry("lib64/ld.so", data=_random.randbytes(50_000), mode=0o755),
        fill("filler-2"),
        Entry("opt", "dir", mode=0o755),
        Entry("opt/lib", "dir", mode=0o755),
        Entry("opt/lib/libfoo.so.1", data=_random.randbytes(50_000)),
        fill("filler-3"),
        Entry("usr", "dir", mode=0o755),
        Entry("usr/lib", "dir", mode=0o755),
        Entry("usr/lib/libfoo.so.1", data=_random.randbytes(50_000)),  # behind the run path's
        fill("filler-4"),
        Entry("usr/lib/libc.so.6", data=_random.randbytes(50_000)),
        fill("filler-5"),
    ]
    image = _Published(tmp_path, [files])
    image.store()
    plan = program_plan(image.layers_dir, image.layers, ["/bin/prog"])
    assert plan is not None and plan.program is not None
    client = _Recording(image.blobs)

    ask_program_libraries(plan, client)

    assert client.closed
    asked = [(d, o, n) for kind, d, o, n in client.events if kind == "prefetch"]
    reader, layer = image.reader(asked)
    try:
        for path in ("lib64/ld.so", "opt/lib/libfoo.so.1", "usr/lib/libc.so.6"):
            want = next(e.data for e in files if e.path == path)
            assert _read(reader, layer, image.layers_dir, path) == want
        with pytest.raises(OSError):  # the run path's libfoo is loaded, not this one
            _read(reader, layer, image.layers_dir, "usr/lib/libfoo.so.1")
    finally:
        reader.close()


def test_an_entry_the_union_refuses_asks_nothing_and_fails_no_start(tmp_path: Path) -> None:
    """A bare ``.wh.`` names no sibling: the TOC union refuses it. The index has it anyway
    (image content); the start goes on, asking nothing, and holds no index after."""
    image = _Published(tmp_path)
    for layer, index_blob, artifact in zip(image.layers, BLOBS, image.artifacts, strict=True):
        odd = IndexEntry((".wh.",), Kind.FILE, size=1, offset=512)
        index = dataclasses.replace(artifact.index, entries=(*artifact.index.entries, odd))
        keep_here(layer, index_blob, dataclasses.replace(artifact, index=index))
    origins = {layer.digest: RemoteOrigin("127.0.0.1:9", "odd") for layer in image.layers}
    store = tmp_path / "store"  # holds nothing: only what this process kept is read

    asked = ask_published_program(tmp_path / "cache", store, image.layers, origins, CANDIDATES)

    assert asked == 0
    assert [take_kept(layer) for layer in image.layers] == [None, None]


def test_what_is_held_for_the_start_is_bounded(tmp_path: Path) -> None:
    image = _Published(tmp_path)
    lower, upper = image.artifacts
    try:
        times = MAX_HELD_ENTRIES // len(lower.index.entries) + 1  # past the bound alone
        many = dataclasses.replace(lower.index, entries=lower.index.entries * times)
        keep_here(image.layers[1], BLOBS[1], upper)
        keep_here(image.layers[0], BLOBS[0], dataclasses.replace(lower, index=many))
        # Past the bound: the start reads the store for that one, as if nothing were held.
        assert take_kept(image.layers[0]) is None
        assert take_kept(image.layers[1]) is not None
    finally:
        forget_kept()
