"""Whole inflated checkpoint intervals: every read right, and each interval inflated once."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers
from lazyfs.blobs.inflated import Kept, interval, read_intervals
from lazyfs.index.published import load_published, store_published
from providers.digest import Digest, digest_bytes
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from tests.support.blob_sources import MemoryBlobs
from tests.support.images import Entry, write_layer
from tests.support.published_artifacts import artifact_of, blobs_of

LAYER = Digest("sha256:" + "a" * 64)


@pytest.mark.parametrize(
    ("bounds", "offset", "expected"),
    [
        ([0, 100, 250], 0, 0),
        ([0, 100, 250], 99, 0),
        ([0, 100, 250], 100, 1),
        ([0, 100, 250], 249, 1),
        ([0, 100, 250], 250, -1),
        ([0, 100, 250], 10**9, -1),
    ],
)
def test_interval(bounds: list[int], offset: int, expected: int) -> None:
    assert interval(bounds, offset) == expected


class Stream:
    """A tar stream cut at ``bounds``, an interval at a time; counts its calls."""

    def __init__(self, data: bytes, bounds: list[int]) -> None:
        self.data = data
        self.bounds = bounds
        self.calls: list[int] = []

    def __call__(self, number: int) -> bytes:
        self.calls.append(number)
        return self.data[self.bounds[number] : self.bounds[number + 1]]


@pytest.mark.parametrize(
    "starts",
    [[0, 1000, 2500, 4000, 9000], [0], [0, 5, 6, 40_000]],
)
def test_every_read_is_the_streams_bytes(starts: list[int]) -> None:
    data = random.Random(1).randbytes(50_000)
    bounds = [*starts, len(data)]
    stream, kept, rng = Stream(data, bounds), Kept(), random.Random(2)
    for _ in range(300):
        offset = rng.randrange(len(data) + 10)
        length = rng.choice([1, 100, 4096, 70_000])
        got = read_intervals(kept, LAYER, bounds, offset, length, stream)
        assert got == data[offset : offset + length], (offset, length)


def test_reads_in_a_kept_interval_inflate_nothing_more() -> None:
    data = random.Random(3).randbytes(50_000)
    bounds = [0, 10_000, 20_000, 30_000, 40_000, 50_000]
    stream, kept = Stream(data, bounds), Kept()
    for offset in (12_000, 19_000, 10_000, 15_500, 11_111):
        assert read_intervals(kept, LAYER, bounds, offset, 500, stream) == data[offset:][:500]
    assert stream.calls == [1]
    # A read across two intervals inflates the second one only.
    assert read_intervals(kept, LAYER, bounds, 19_000, 2_000, stream) == data[19_000:21_000]
    assert stream.calls == [1, 2]


def test_kept_intervals_stay_within_their_bound() -> None:
    data = random.Random(4).randbytes(100_000)
    bounds = [*range(0, 100_000, 10_000), 100_000]
    stream, kept = Stream(data, bounds), Kept(max_bytes=25_000)
    for offset in range(0, 100_000, 10_000):
        read_intervals(kept, LAYER, bounds, offset, 10, stream)
    assert len(stream.calls) == 10
    read_intervals(kept, LAYER, bounds, 95_000, 10, stream)  # the last: still kept
    read_intervals(kept, LAYER, bounds, 5, 10, stream)  # the first: dropped long ago
    assert len(stream.calls) == 11


def test_a_published_gzip_layer_inflates_each_interval_once(tmp_path: Path) -> None:
    rng = random.Random(5)
    files = [Entry(f"f{n}", data=rng.randbytes(30_000)) for n in range(40)]
    tar = write_layer(files, tmp_path / "layer.tar").read_bytes()
    blob = gzip.compress(tar)
    (tmp_path / "blob").write_bytes(blob)
    digest = digest_bytes(blob)
    artifact, windows = artifact_of(tmp_path / "blob", digest, tmp_path / "scratch")
    index_blob = Digest("sha256:" + "e" * 64)
    store_published(tmp_path / "layers", index_blob, artifact)
    layer = Layer(digest, "", len(blob), None, ((INDEX_BLOB_ANNOTATION, index_blob),))
    found = load_published(tmp_path / "layers", layer)
    assert found is not None
    reader = PublishedLayers({digest: found[2]}, MemoryBlobs(blobs_of(artifact, blob, windows)))
    try:
        # Reads scattered through the stream, as page faults of a mapped file come.
        offsets = [rng.randrange(len(tar) - 4096) for _ in range(200)]
        for offset in offsets:
            assert reader.read_range(digest, offset, 4096) == tar[offset : offset + 4096]
        first = reader.inflations
        for offset in offsets:
            assert reader.read_range(digest, offset, 4096) == tar[offset : offset + 4096]
        assert reader.inflations == first  # all of them inside kept intervals
        # The stream is 1.2 MB: about 20 intervals of 64 KiB, each inflated once.
        assert first <= 25
    finally:
        reader.close()
