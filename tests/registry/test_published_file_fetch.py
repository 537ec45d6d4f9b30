"""A file read through a published index costs about one request to the registry, as on eStargz.

A gzip layer whose index is published is cut into checkpoint intervals
(64 KiB of tar stream apart here), each its own span of the compressed blob
with its own window.  A program reading a file spanning many of them used to
miss in each, one range request after another.  Now its first miss has the
cache daemon fetch the intervals up to the file's last byte in one request
(``lazyfs.blobs.published_ahead``), and the window of the first of them
only (each later one inflates from the tail of the one before): counted
here at a proxy in front of a real ``docker-registry``, with a real
``lazyfs daemon`` between, the file read in the kernel's 128 KiB pieces.

Every byte still comes from verified spans: a span of the file the
registry's answer spoils is EIO, never a wrong byte.
"""

from __future__ import annotations

import errno
import gzip
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers, open_published
from lazyfs.cache.client import CacheClient, RemoteBlob
from lazyfs.cache.messages import RegistryOrigin
from lazyfs.index.model import IndexEntry
from lazyfs.index.published import PublishedData, load_published, store_published
from providers.digest import Digest, digest_bytes
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from tests.support.cache_daemons import run_daemon
from tests.support.counting_proxy import CountingProxy, run_counting_proxy
from tests.support.images import Entry, write_layer
from tests.support.published_artifacts import BLOB, artifact_of
from tests.support.registry_servers import put_blob, run_registry

REPOSITORY = "files"
CHUNK = 1 << 17  # what the mount's chunk cache asks a reader for at once

_random = random.Random(13)
# Random bytes do not compress: "big" is some 600 KB of blob, ten intervals.
FILES = [
    Entry("small", data=b"hello\n"),
    Entry("big", data=_random.randbytes(600_000)),
    Entry("after", data=_random.randbytes(300_000)),
]


@dataclass
class Remote:
    reader: PublishedLayers
    data: PublishedData
    proxy: CountingProxy
    layer: Digest
    windows: Digest
    tar: bytes
    big: IndexEntry


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    """The layer and its windows blob in a registry behind a counting proxy, read through
    a real cache daemon by a reader of its published index."""
    tar = write_layer(FILES, tmp_path / "layer.tar").read_bytes()
    blob = gzip.compress(tar)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    digest = digest_bytes(blob)
    artifact, windows = artifact_of(path, digest, tmp_path / "scratch")
    assert artifact.windows is not None
    store_published(tmp_path / "layers", BLOB, artifact)
    layer = Layer(digest, "", len(blob), None, ((INDEX_BLOB_ANNOTATION, BLOB),))
    found = load_published(tmp_path / "layers", layer)
    assert found is not None
    proxy = CountingProxy()
    with (
        run_registry(tmp_path, tmp_path / "storage") as registry,
        run_counting_proxy(registry.url, proxy) as host,
        run_daemon(tmp_path / "work", tmp_path / "cache"),
    ):
        assert put_blob(registry.url, REPOSITORY, blob) == digest
        assert put_blob(registry.url, REPOSITORY, windows) == artifact.windows
        origin = RegistryOrigin(host, REPOSITORY)
        client = CacheClient(
            tmp_path / "cache", {digest: RemoteBlob(origin, len(blob), exact=True)}
        )
        try:
            opened = open_published(tmp_path / "layers", layer, client)
            assert opened is not None
            index, reader, _ = opened
            big = next(e for e in index.entries if e.path == ("big",))
            yield Remote(reader, found[2], proxy, digest, artifact.windows, tar, big)
        finally:
            client.close()


def _gets(proxy: CountingProxy, digest: str, since: int = 0) -> int:
    return len(proxy.select(lambda e: e.method == "GET" and f"/blobs/{digest}" in e.path, since))


def _chunks(remote: Remote) -> list[int]:
    """Where the mount reads file "big": the aligned chunks of the tar stream holding it."""
    start, end = remote.big.offset, remote.big.offset + remote.big.size
    return list(range(start - start % CHUNK, end, CHUNK))


def _read_file(remote: Remote, chunks: list[int]) -> bytes:
    """The file "big" read as the mount reads it, from ``chunks``."""
    whole = b"".join(remote.reader.read_range(remote.layer, at, CHUNK) for at in chunks)
    start = remote.big.offset - chunks[0]
    return whole[start : start + remote.big.size]


def test_a_file_over_many_intervals_is_one_request_for_its_spans_and_no_more_windows(
    remote: Remote,
) -> None:
    bounds = remote.data.bounds
    first = sum(1 for b in bounds if b <= remote.big.offset)
    last = sum(1 for b in bounds if b < remote.big.offset + remote.big.size)
    assert last - first >= 5, "the file spans several intervals"
    chunks = _chunks(remote)
    assert chunks[0] < remote.big.offset < chunks[1]

    # The first chunk starts before the file (headers and "small"), but it is
    # mostly the file's: one request brings the file.  Its first interval is the
    # stream's, which needs no window, and each after it inflates from the tail
    # of the one before: no window is fetched.
    assert chunks[0] < bounds[1]
    got = _read_file(remote, chunks)
    assert got == remote.tar[remote.big.offset :][: remote.big.size]
    assert _gets(remote.proxy, remote.layer) == 1
    assert _gets(remote.proxy, remote.windows) == 0


def test_a_spoilt_span_of_the_file_is_eio_never_a_wrong_byte(
    remote: Remote, caplog: pytest.LogCaptureFixture
) -> None:
    # A span well inside the file, fetched with the rest of it and spoilt every time.
    inside = remote.big.offset + remote.big.size // 2
    point = max((p for p in remote.data.points or () if p.position <= inside),
                key=lambda p: p.position)  # fmt: skip
    remote.proxy.corrupt(remote.layer, point.offset + 100, times=None)
    with pytest.raises(OSError) as raised:
        _read_file(remote, _chunks(remote))
    assert raised.value.errno == errno.EIO
    assert "does not match its published index" in str(raised.value)
    assert "does not match its published index" in caplog.text
    # The index and the registry's bytes disagree: nothing more of the layer is served.
    with pytest.raises(OSError) as again:
        remote.reader.read_range(remote.layer, remote.big.offset, 4096)
    assert again.value.errno == errno.EIO
