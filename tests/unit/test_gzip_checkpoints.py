"""gzip checkpoints: ranges of the uncompressed stream equal slices of it, from any thread.

Built by zran (``gzip_checkpoints``), read with ISA-L (``gzip_reads``).
"""

from __future__ import annotations

import errno
import gzip
import itertools
import random
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.blobs.ranges import open_layers
from lazyfs.index.formats import build_index
from lazyfs.index.gzip_points import read_checkpoints
from lazyfs.index.gzip_reads import GzipCheckpoints
from lazyfs.index.model import CHECKPOINTS_NAME, LayerData, LayerIndex
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage
from tests.support.images import Entry, write_layer

SPACING = 1 << 16  # zran's least is just over its 32 KiB window
_random = random.Random(7)
FILES = [
    Entry("small", data=b"hello\n"),
    # Incompressible and compressible parts, both longer than the spacing.
    Entry("noise", data=_random.randbytes(300_000)),
    Entry("text", data=b"".join(b"line %d of the text\n" % i for i in range(40_000))),
    Entry("dir", "dir"),
    Entry("dir/more", data=_random.randbytes(150_000) * 2),
]


class Layer:
    """A gzip layer built in the test, indexed with a small spacing."""

    def __init__(self, tmp_path: Path, entries: list[Entry] = FILES) -> None:
        self.tar = write_layer(entries, tmp_path / "layer.tar").read_bytes()
        self.blob = tmp_path / "blob.gz"
        self.blob.write_bytes(gzip.compress(self.tar))
        self.digest = digest_bytes(self.blob.read_bytes())
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        self.index: LayerIndex = build_index(self.digest, self.blob, scratch, spacing=SPACING)
        self.checkpoints = scratch / CHECKPOINTS_NAME


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Layer:
    return Layer(tmp_path_factory.mktemp("gzip"))


@pytest.fixture(scope="module")
def reader(layer: Layer) -> GzipCheckpoints:
    return GzipCheckpoints({layer.digest: (layer.blob, layer.checkpoints)})


def test_the_index_is_that_of_the_tar(layer: Layer) -> None:
    assert layer.index.compression == "gzip" and layer.index.tar_size == len(layer.tar)
    assert layer.index.checkpoints_size == layer.checkpoints.stat().st_size
    # Several checkpoints (a 32 KiB window each), so reads cross them.
    assert layer.index.checkpoints_size > 8 * 32768
    contents = {entry.path: entry.data for entry in FILES}
    files = [entry for entry in layer.index.entries if entry.size]
    assert len(files) == 4
    for entry in files:
        assert layer.tar[entry.offset : entry.offset + entry.size] == contents["/".join(entry.path)]


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(0, 1_200_000), length=st.integers(0, 300_000))
def test_ranges_are_slices_of_the_stream(
    layer: Layer, reader: GzipCheckpoints, offset: int, length: int
) -> None:
    assert reader.read_range(layer.digest, offset, length) == layer.tar[offset : offset + length]


def test_reads_at_and_after_the_end(layer: Layer, reader: GzipCheckpoints) -> None:
    size = len(layer.tar)
    assert reader.read_range(layer.digest, size - 10, 100) == layer.tar[-10:]
    assert reader.read_range(layer.digest, size, 100) == b""
    assert reader.read_range(layer.digest, size + 12345, 1) == b""
    assert reader.read_range(layer.digest, 0, size + 1) == layer.tar
    assert reader.read_range(layer.digest, 5, 0) == b""


def test_unknown_layers_are_key_errors(reader: GzipCheckpoints) -> None:
    with pytest.raises(KeyError):
        reader.read_range(Digest("sha256:" + "0" * 64), 0, 1)


def test_concurrent_reads_get_their_own_bytes(layer: Layer) -> None:
    # One handle per layer at most 2: the other threads wait for them.
    reader = GzipCheckpoints({layer.digest: (layer.blob, layer.checkpoints)}, handles_per_layer=2)
    failures: list[str] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        draw = random.Random(seed)
        start.wait(timeout=30)
        for _ in range(40):
            offset, length = draw.randrange(len(layer.tar)), draw.randrange(1, 200_000)
            if reader.read_range(layer.digest, offset, length) != layer.tar[offset:][:length]:
                failures.append(f"{offset}+{length}")

    # Through futures: an exception in a worker fails the test, not just its thread.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for done in [pool.submit(work, seed) for seed in range(8)]:
            done.result()
    assert reader._pools[layer.digest]._made <= 2  # bounded, however many threads
    reader.close()
    assert failures == []


def test_open_layers_dispatches_by_layer(tmp_path: Path, layer: Layer) -> None:
    plain = tmp_path / "plain.tar"
    plain.write_bytes(b"plain tar bytes")
    other = Digest("sha256:" + "2" * 64)
    source = open_layers(
        {layer.digest: LayerData(layer.blob, layer.checkpoints), other: LayerData(plain)}
    )
    assert source.read_range(other, 6, 3) == b"tar"
    assert source.read_range(layer.digest, 1000, 5000) == layer.tar[1000:6000]


def test_missing_or_damaged_checkpoints_are_eio(tmp_path: Path, layer: Layer) -> None:
    gone = GzipCheckpoints({layer.digest: (layer.blob, tmp_path / "nothing")})
    with pytest.raises(OSError) as caught:
        gone.read_range(layer.digest, 0, 10)
    assert caught.value.errno == errno.EIO and layer.digest in str(caught.value)
    damaged = tmp_path / "damaged"
    damaged.write_bytes(layer.checkpoints.read_bytes()[:1000])
    with pytest.raises(OSError) as caught:
        GzipCheckpoints({layer.digest: (layer.blob, damaged)}).read_range(layer.digest, 0, 10)
    assert caught.value.errno == errno.EIO


@pytest.mark.parametrize("damage", ["truncated", "flipped", "crc", "garbage"])
def test_corrupt_gzip_is_a_bad_image_naming_the_layer(tmp_path: Path, damage: str) -> None:
    tar = write_layer(FILES, tmp_path / "layer.tar").read_bytes()
    data = bytearray(gzip.compress(tar))
    if damage == "truncated":
        del data[len(data) // 2 :]
    elif damage == "flipped":
        data[len(data) // 3] ^= 0xFF
    elif damage == "crc":
        data[-6] ^= 0xFF  # the CRC32 in the trailer
    else:
        data += b"garbage!"
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(data))
    digest = digest_bytes(bytes(data))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(BadImage, match=f"bad layer {digest}"):
        build_index(digest, blob, scratch, spacing=SPACING)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("shape", ["members", "empty members", "zero padding"])
def test_multi_member_and_padded_gzip_read_back(tmp_path: Path, shape: str) -> None:
    # Concatenated members (as pigz --independent or eStargz write) and the
    # zero padding gzip readers accept must index and read like one stream.
    tar = write_layer(FILES, tmp_path / "layer.tar").read_bytes()
    cuts = [0, 100_000, 400_001, len(tar)]
    if shape == "members":
        data = b"".join(gzip.compress(tar[a:b]) for a, b in itertools.pairwise(cuts))
    elif shape == "empty members":
        parts = [gzip.compress(tar[a:b]) for a, b in itertools.pairwise(cuts)]
        data = gzip.compress(b"") + gzip.compress(b"").join(parts) + gzip.compress(b"")
    else:
        data = gzip.compress(tar) + b"\0" * 700
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    digest = digest_bytes(data)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    index = build_index(digest, blob, scratch, spacing=SPACING)
    assert index.tar_size == len(tar)
    reader = GzipCheckpoints({digest: (blob, scratch / CHECKPOINTS_NAME)})
    for offset in (0, 99_990, 100_000, 400_000, 555_555, len(tar) - 3):
        assert reader.read_range(digest, offset, 70_000) == tar[offset : offset + 70_000]


def _varied_layer(tmp_path: Path, seed: int) -> Layer:
    draw = random.Random(seed)
    entries = [
        Entry(f"f{number}", data=draw.randbytes(draw.randrange(1, 90_000)))
        if draw.random() < 0.5
        else Entry(f"f{number}", data=b"".join(b"%d " % draw.randrange(99) for _ in range(40_000)))
        for number in range(8)
    ]
    folder = tmp_path / str(seed)
    folder.mkdir()
    return Layer(folder, entries)


def test_each_checkpoint_is_entered_at_whatever_bit_its_block_starts() -> None:
    # Blocks start mid-byte (bits 1-7 of the byte before the offset belong to
    # them) and stored blocks of the noise follow, aligned to the stream's
    # bytes: each read enters at its own checkpoint, the last first.
    bits_seen = set()
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(6):
            layer = _varied_layer(Path(scratch), seed)
            reader = GzipCheckpoints({layer.digest: (layer.blob, layer.checkpoints)})
            for point in reversed(read_checkpoints(layer.checkpoints).points):
                bits_seen.add(point.bits)
                got = reader.read_range(layer.digest, point.position, 100_000)
                assert got == layer.tar[point.position : point.position + 100_000], (seed, point)
    assert bits_seen == set(range(8))


def _damaged(checkpoints: bytes, damage: str) -> bytes:
    head, point = 5 + 1 + 1 + 8 + 8 + 4 + 4 + 4, 8 + 8 + 1 + 1
    data = bytearray(checkpoints)
    if damage == "version":
        data[5] = 2
    elif damage == "bits":
        data[head + point + 16] = 9  # the second checkpoint's bits
    elif damage == "order":
        data[head + point + 8 : head + point + 16] = (10**9).to_bytes(8, "little")
    elif damage == "count":
        data[head - 4 : head] = (int.from_bytes(data[head - 4 : head], "little") - 1).to_bytes(
            4, "little"
        )
    else:
        data += b"\0"
    return bytes(data)


@pytest.mark.parametrize("damage", ["version", "bits", "order", "count", "longer"])
def test_a_damaged_checkpoint_table_is_eio(tmp_path: Path, layer: Layer, damage: str) -> None:
    damaged = tmp_path / "damaged"
    damaged.write_bytes(_damaged(layer.checkpoints.read_bytes(), damage))
    with pytest.raises(OSError) as caught:
        GzipCheckpoints({layer.digest: (layer.blob, damaged)}).read_range(layer.digest, 0, 10)
    assert caught.value.errno == errno.EIO and layer.digest in str(caught.value)
