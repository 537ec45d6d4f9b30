"""The gzip cursor (``lazyfs.index.gzip_reads``): entering mid-byte, reading on, its bounds."""

from __future__ import annotations

import errno
import gzip
import struct
import threading
import zlib
from pathlib import Path
from types import ModuleType

import pytest
from isal import isal_zlib

from lazyfs.blobs.gzip_inflate import inflate_from
from lazyfs.index.artifact import Point
from lazyfs.index.gzip_checkpoints import Checkpointer
from lazyfs.index.gzip_points import Checkpoint, Checkpoints, read_checkpoints
from lazyfs.index.gzip_reads import OUTPUT_AT_MOST, Cursor, GzipCheckpoints, _lead_in
from providers.digest import Digest


class Bits:
    """Deflate's bit order: each byte filled from its lowest bit."""

    def __init__(self) -> None:
        self.value = self.count = 0

    def put(self, bits: int, width: int) -> None:
        self.value |= bits << self.count
        self.count += width

    def to_byte(self) -> None:
        self.count += -self.count % 8

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


@pytest.mark.parametrize("inflater", [zlib, isal_zlib], ids=["zlib", "isal"])
@pytest.mark.parametrize("bits", range(1, 8))
def test_a_block_entered_mid_byte_reads_the_stored_block_after_it(
    bits: int, inflater: ModuleType
) -> None:
    # The byte before the checkpoint ends an earlier block in its low 8 - bits
    # bits (ones here: junk to the cursor) and starts a stored block in its
    # top ``bits``; a stored block's length starts at the next byte boundary,
    # which must be the stream's own, and a fixed block with one literal ends it.
    stream = Bits()
    stream.put((1 << (8 - bits)) - 1, 8 - bits)
    stream.put(0b000, 3)  # not the last block; stored
    stream.to_byte()
    payload = b"stored bytes"
    stream.put(len(payload) | (~len(payload) & 0xFFFF) << 16, 32)
    for byte in payload:
        stream.put(byte, 8)
    stream.put(0b011, 3)  # the last block; fixed codes
    code = 0x30 + ord("Y")  # literals 0-143: 8-bit codes from 0x30, sent top bit first
    stream.put(int(f"{code:08b}"[::-1], 2), 8)
    stream.put(0, 7)  # the end code
    raw = stream.bytes()
    decoder = inflater.decompressobj(wbits=-15)
    entered = _lead_in(bits, raw[0]) + raw[1:]
    assert decoder.decompress(entered) == payload + b"Y" and decoder.eof


class Recorded:
    """A blob in memory, cut into spans as a published index cuts it; every read kept."""

    def __init__(self, blob: bytes, span_ends: list[int]) -> None:
        self.blob = blob
        self.span_ends = span_ends
        self.reads: list[tuple[int, int]] = []

    def compressed(self, at: int, size: int) -> bytes:
        end = min(e for e in [*self.span_ends, len(self.blob)] if e > at)
        got = self.blob[at : min(at + size, end)]
        self.reads.append((at, len(got)))
        return got

    def window(self, point: Checkpoint) -> bytes:
        raise AssertionError("no checkpoint here has a window")


def test_output_held_at_the_cap_comes_before_the_next_span(tmp_path: Path) -> None:
    # Interval 1 is one block of a repeated pattern, [2 MiB, 3 MiB + r): it
    # inflates from little input, and for some r the last call's cap falls in
    # its last match after zlib took every byte of the span (the block's end
    # code with it). What zlib holds then must come out before any byte past
    # the span is asked for: the next span is another fetch. (The byte where
    # the next block starts, ``bits`` into it, may end this one: it is read.)
    start = 2 << 20
    past: list[tuple[int, int, int]] = []
    for r in range(1, 258, 3):
        end = start + 4 * OUTPUT_AT_MOST + r
        data = b"abcdefgh" * ((end + (1 << 20)) // 8)
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        parts = [compressor.compress(data[:start]), compressor.flush(zlib.Z_BLOCK)]
        parts += [compressor.compress(data[start:end]), compressor.flush(zlib.Z_BLOCK)]
        blob = b"".join([*parts, compressor.compress(data[end:]), compressor.flush()])
        (tmp_path / "blob").write_bytes(blob)
        with Checkpointer(tmp_path / "blob", layer="x", spacing=1 << 20) as checkpointer:
            checkpointer.reached(len(data))
            exported = checkpointer.export(len(data))
        (tmp_path / "checkpoints").write_bytes(exported)
        table = read_checkpoints(tmp_path / "checkpoints")
        assert [p.position for p in table.points[:3]] == [0, start, end]
        entered = table.points[1]
        assert entered.window_at is not None
        window = exported[entered.window_at : entered.window_at + 32768]
        source = Recorded(blob, [p.compressed for p in table.points])
        point = Point(entered.compressed, entered.position, entered.bits, "", None)
        first = Point(table.points[0].compressed, 0, 0, "", None)
        got = inflate_from(
            first, point, window, source.compressed, (len(blob), len(data)), start, end - start
        )
        assert got == data[start:end]
        if (reached := max(at + n for at, n in source.reads)) > table.points[2].compressed:
            past.append((r, reached, table.points[2].compressed))
    assert past == []


def test_reads_front_to_back_inflate_the_stream_once() -> None:
    data = b"".join(b"line %d\n" % n for n in range(300_000))
    blob = zlib.compress(data, wbits=-15)
    table = Checkpoints(len(blob), len(data), (Checkpoint(0, 0, 0, None),), (0,))
    source = Recorded(blob, [])
    cursor = Cursor(table)
    chunk = 1 << 17
    got = b"".join(cursor.read(source, at, chunk) for at in range(0, len(data), chunk))
    assert got == data
    # Each compressed byte was read once: no read went back to the checkpoint.
    assert sum(n for _, n in source.reads) <= len(blob)
    # A read behind the cursor starts over from the checkpoint, and is right.
    assert cursor.read(source, 5, 10) == data[5:15]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    folder = tmp_path_factory.mktemp("stored")
    data = b"".join(b"word %d " % n for n in range(200_000))
    blob = folder / "blob"
    blob.write_bytes(gzip.compress(data))
    with Checkpointer(blob, layer="x", spacing=1 << 16) as checkpointer:
        checkpointer.reached(len(data))
        (folder / "checkpoints").write_bytes(checkpointer.export(len(data)))
    return blob, folder / "checkpoints", data


DIGEST = Digest("sha256:" + "1" * 64)
_HEAD = struct.Struct("<5sBBQQIII")


@pytest.mark.parametrize("damage", ["points", "blob size"])
def test_a_table_out_of_all_bounds_is_eio(
    tmp_path: Path, stored: tuple[Path, Path, bytes], damage: str
) -> None:
    blob, checkpoints, _ = stored
    data = bytearray(checkpoints.read_bytes())
    head = list(_HEAD.unpack_from(data))
    if damage == "points":
        head[7] = 2**32 - 1  # a count the file could never hold: not read, refused
    else:
        head[3] = 2**63  # offsets may be as big, past what pread takes
    data[: _HEAD.size] = _HEAD.pack(*head)
    damaged = tmp_path / "damaged"
    damaged.write_bytes(bytes(data))
    reader = GzipCheckpoints({DIGEST: (blob, damaged)})
    with pytest.raises(OSError) as caught:
        reader.read_range(DIGEST, 100_000, 10)
    assert caught.value.errno == errno.EIO


def test_a_failed_read_gives_its_cursor_back(
    tmp_path: Path, stored: tuple[Path, Path, bytes]
) -> None:
    blob, checkpoints, data = stored
    copy = tmp_path / "checkpoints"
    copy.write_bytes(checkpoints.read_bytes())
    reader = GzipCheckpoints({DIGEST: (blob, copy)}, handles_per_layer=1)
    assert reader.read_range(DIGEST, 0, 10) == data[:10]  # the table is read; no window yet
    copy.unlink()  # the windows are read from the file as a read enters at one
    middle = len(data) // 2
    for _ in range(3):
        with pytest.raises(OSError) as caught:
            reader.read_range(DIGEST, middle, 10)
        assert caught.value.errno == errno.EIO
    copy.write_bytes(checkpoints.read_bytes())
    # With the one cursor lost to a failure, this read would wait for ever.
    got: list[bytes] = []
    reading = threading.Thread(target=lambda: got.append(reader.read_range(DIGEST, middle, 10)))
    reading.start()
    reading.join(timeout=60)
    assert not reading.is_alive() and got == [data[middle : middle + 10]]


def test_a_blob_of_another_size_than_the_checkpoints_say_is_eio(
    tmp_path: Path, stored: tuple[Path, Path, bytes]
) -> None:
    blob, checkpoints, _ = stored
    cut = tmp_path / "cut"
    cut.write_bytes(blob.read_bytes()[:-1])
    with pytest.raises(OSError) as caught:
        GzipCheckpoints({DIGEST: (cut, checkpoints)}).read_range(DIGEST, 0, 10)
    assert caught.value.errno == errno.EIO and "blob" in str(caught.value)
