"""A published index's file entries are held to the tar headers before their data.

Span digests cannot catch a self-consistent index whose entries lie: a
file pointed at another file's data, or made setuid root.  Reading such a
file through ``open_published`` is EIO with one logged reason; honest
entries, and the other files of a lying index, read right.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import random
from pathlib import Path

import pytest

from lazyfs.blobs.gzip_remote import open_published
from lazyfs.index.artifact import LayerArtifact
from lazyfs.index.model import IndexEntry, Kind
from lazyfs.index.published import store_published
from providers.digest import Digest, digest_bytes
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from tests.support.blob_sources import MemoryBlobs
from tests.support.images import Entry, write_layer
from tests.support.published_artifacts import artifact_of, blobs_of

_random = random.Random(7)
FILES = [
    Entry("dir", kind="dir"),
    Entry("dir/small", data=b"hello\n", mode=0o644),
    Entry("noise", data=_random.randbytes(300_000)),
    Entry("tool", data=b"#!/bin/sh\necho hi\n", mode=0o755),
    Entry("text", data=b"".join(b"line %d\n" % i for i in range(30_000))),
]
BLOB = Digest("sha256:" + "d" * 64)


@dataclasses.dataclass
class Layered:
    tar: bytes
    blob: bytes
    digest: Digest
    artifact: LayerArtifact
    blobs: dict[Digest, bytes]

    def entry(self, name: str) -> IndexEntry:
        return next(e for e in self.artifact.index.entries if "/".join(e.path) == name)

    def published(self, tmp: Path, artifact: LayerArtifact, *, entries: bool = True) -> object:
        layers = tmp / "layers"
        store_published(layers, BLOB, artifact)
        layer = Layer(self.digest, "", len(self.blob), None, ((INDEX_BLOB_ANNOTATION, BLOB),))
        found = open_published(layers, layer, MemoryBlobs(self.blobs), entries=entries)
        assert found is not None
        return found[1]

    def lying(self, name: str, **changes: object) -> LayerArtifact:
        index = self.artifact.index
        told = [dataclasses.replace(e, **changes) if "/".join(e.path) == name else e  # type: ignore[arg-type]
                for e in index.entries]  # fmt: skip
        return dataclasses.replace(
            self.artifact, index=dataclasses.replace(index, entries=tuple(told))
        )


@pytest.fixture(params=[True, False], ids=["gzip", "tar"])
def layered(request: pytest.FixtureRequest, tmp_path: Path) -> Layered:
    tar = write_layer(FILES, tmp_path / "layer.tar").read_bytes()
    blob = gzip.compress(tar) if request.param else tar
    path = tmp_path / "blob"
    path.write_bytes(blob)
    digest = digest_bytes(blob)
    artifact, windows = artifact_of(path, digest, tmp_path / "scratch")
    return Layered(tar, blob, digest, artifact, blobs_of(artifact, blob, windows))


def _read(reader: object, digest: Digest, entry: IndexEntry) -> bytes:
    return reader.read_range(digest, entry.offset, entry.size)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("entries", [True, False], ids=["entries", "header only"])
def test_honest_entries_read_right(layered: Layered, tmp_path: Path, entries: bool) -> None:
    reader = layered.published(tmp_path, layered.artifact, entries=entries)
    for entry in layered.artifact.index.entries:
        if entry.kind is Kind.FILE:
            got = _read(reader, layered.digest, entry)
            assert got == layered.tar[entry.offset : entry.offset + entry.size]
    # As the mount's chunk cache asks: aligned pieces across files.
    step = 1 << 16
    whole = b"".join(reader.read_range(layered.digest, at, step)  # type: ignore[attr-defined]
                     for at in range(0, len(layered.tar), step))  # fmt: skip
    assert whole == layered.tar


@pytest.mark.parametrize(
    "lie",
    [
        {"mode": 0o4755, "uid": 0, "gid": 0},
        {"size": 5},
        {"path": ("dir", "other")},
        {"mtime_ns": 1},
    ],
    ids=["setuid root", "size", "name", "mtime"],
)
def test_an_entry_its_header_does_not_describe_is_eio(
    layered: Layered, tmp_path: Path, caplog: pytest.LogCaptureFixture, lie: dict[str, object]
) -> None:
    artifact = layered.lying("dir/small", **lie)
    reader = layered.published(tmp_path, artifact)
    told = next(e for e in artifact.index.entries if e.offset == layered.entry("dir/small").offset)
    for _ in range(2):
        with pytest.raises(OSError) as raised:
            _read(reader, layered.digest, told)
        assert raised.value.errno == errno.EIO
        assert "its tar header says" in str(raised.value)
    assert caplog.text.count("published index refused for") == 1
    text = layered.entry("text")
    assert _read(reader, layered.digest, text) == layered.tar[text.offset :][: text.size]
    with pytest.raises(OSError) as raised:  # a chunk that holds its data, from before it
        reader.read_range(layered.digest, 0, len(layered.tar))  # type: ignore[attr-defined]
    assert raised.value.errno == errno.EIO


def test_a_file_pointed_at_another_files_data_is_eio(layered: Layered, tmp_path: Path) -> None:
    tool = layered.entry("tool")
    artifact = layered.lying("dir/small", offset=tool.offset, size=tool.size, mode=0o4755, uid=0)
    reader = layered.published(tmp_path, artifact)
    with pytest.raises(OSError) as raised:
        reader.read_range(layered.digest, tool.offset, tool.size)  # type: ignore[attr-defined]
    assert raised.value.errno == errno.EIO
    assert "dir/small" in str(raised.value)
