"""The chunk table's text form: read back equal, and refused whole when damaged."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from isal import isal_zlib

from lazyfs.blobs.estargz_reader import EstargzChunks
from lazyfs.index.estargz_chunks import ChunkRow, ChunkTable, dumps, loads
from providers.digest import Digest
from tests.support.blob_sources import MemoryBlobs

LAYER = Digest("sha256:" + "1" * 64)
TOC = Digest("sha256:" + "2" * 64)
CHUNK = Digest("sha256:" + "3" * 64)


def _table() -> ChunkTable:
    rows = (
        ChunkRow(0, 10, 0, 40, 0, 0, CHUNK, "a"),
        ChunkRow(10, 5, 40, 70, 0, 10, CHUNK, "a"),
        ChunkRow(1 << 20, 7, 70, 90, 3, 0, CHUNK, "b"),
    )
    return ChunkTable(LAYER, TOC, 100, rows, (0, 40))


def test_a_table_reads_back_equal_row_by_row() -> None:
    table = _table()
    again = loads(dumps(table))
    assert again == table and hash(again) == hash(table) and repr(again) == repr(table)
    assert list(again.rows) == list(table.rows) and again.size == table.size == (1 << 20) + 7
    assert again.rows[-1] == table.rows[2] and again.rows[1:] == table.rows[1:]
    assert [again.rows[n].name for n in again.covering(12, (1 << 20) + 1)] == ["a", "b"]


def _with_row(number: int, row: list[object]) -> str:
    head, rows = dumps(_table()).splitlines()
    raw = json.loads(rows)
    raw[number] = row
    return f"{head}\n{json.dumps(raw)}\n"


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ([10, 5, 40, 70, 0, 10, CHUNK], "eight fields"),
        ([10, 5, "40", 70, 0, 10, CHUNK, "a"], "not an integer"),
        ([10, 5, 40.0, 70, 0, 10, CHUNK, "a"], "not an integer"),
        ([9, 5, 40, 70, 0, 10, CHUNK, "a"], "not after"),
        ([10, 5, 40, 101, 0, 10, CHUNK, "a"], "inside the blob"),
        ([10, 0, 40, 70, 0, 10, CHUNK, "a"], "not after"),
        ([10, 5, 40, 70, 0, 10, "x:y", "a"], "bad digest"),
        ([10, 5, 40, 70, 0, 10, CHUNK, None], "bad digest or name"),
    ],
)
def test_a_damaged_row_refuses_the_whole_table(row: list[object], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        loads(_with_row(1, row))


@pytest.mark.parametrize(
    "header",
    [
        {"rows": None},  # no row count: dropped below
        {"blob_size": float("inf")},  # json reads Infinity, which int() does not take
        {"prefetch": [float("inf"), 1]},
        {"prefetch": [0]},
        {"rows": 2.0},
    ],
)
def test_a_damaged_header_refuses_the_table_with_a_value_error(header: dict[str, object]) -> None:
    head, rows = dumps(_table()).splitlines()
    fields = json.loads(head)
    fields.update(header)
    if header.get("rows", 0) is None:
        del fields["rows"]
    with pytest.raises(ValueError, match="malformed chunk table"):
        loads(f"{json.dumps(fields)}\n{rows}\n")


def test_a_table_in_hand_is_taken_only_for_its_own_layer(tmp_path: Path) -> None:
    mine, other = Digest("sha256:" + "1" * 64), Digest("sha256:" + "2" * 64)
    table = ChunkTable(other, Digest("sha256:" + "3" * 64), 100, ())
    with pytest.raises(ValueError, match=f"the chunk table given is {other}'s"):
        EstargzChunks({mine: tmp_path / "chunks"}, MemoryBlobs({}), loaded={mine: table})
    with pytest.raises(ValueError, match=f"given for {other}, which is not read here"):
        EstargzChunks({mine: tmp_path / "chunks"}, MemoryBlobs({}), loaded={other: table})
    kept = EstargzChunks({other: tmp_path / "absent"}, MemoryBlobs({}), loaded={other: table})
    assert kept.read_range(other, 0, 10) == b""  # the file named is never read


class FarBlob:
    """A blob of 8 GiB: one gzip member of ``data`` at offset 0, then padding that a
    hostile TOC places before its next chunk. Records the lengths asked."""

    SIZE = 8 << 30

    def __init__(self, member: bytes) -> None:
        self.member = member
        self.asked: list[int] = []

    def open(self, digest: Digest) -> Any:
        raise AssertionError("read by range only")

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.asked.append(length)
        assert length < 64 << 20, f"asked for {length} bytes at once"
        head = self.member[offset : offset + length]
        return head + bytes(min(length, self.SIZE - offset) - len(head))


def _zlib_least_memory(data: bytes) -> bytes:
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31, 1)  # a block every 128 bytes
    return deflate.compress(data) + deflate.flush()


def _isal_level_0(data: bytes) -> bytes:
    deflate = isal_zlib.compressobj(0, isal_zlib.DEFLATED, 31)  # 23% over incompressible bytes
    return bytes(deflate.compress(data) + deflate.flush())


NOISE = random.Random(1).randbytes(4 << 20)


@pytest.mark.parametrize(
    ("data", "deflate"),
    [(b"hello", gzip.compress), (NOISE, _zlib_least_memory), (NOISE, _isal_level_0)],
    ids=["small", "zlib's least memory", "ISA-L level 0"],
)
def test_a_chunk_whose_member_is_followed_by_gigabytes_is_read_by_its_own_bytes(
    tmp_path: Path, data: bytes, deflate: Callable[[bytes], bytes]
) -> None:
    # The TOC puts the next chunk (or itself) 8 GiB on: reading the file must
    # not ask for the room in between, let alone hold it in memory; and a member
    # that deflate made larger than its bytes is still read whole.
    member = deflate(data)
    digest = Digest("sha256:" + hashlib.sha256(data).hexdigest())
    layer = Digest("sha256:" + "f" * 64)
    row = ChunkRow(0, len(data), 0, FarBlob.SIZE, 0, 0, digest, "f")
    table = ChunkTable(layer, Digest("sha256:" + "e" * 64), FarBlob.SIZE, [row])
    blob = FarBlob(member)
    reader = EstargzChunks({layer: tmp_path / "t"}, blob, loaded={layer: table})
    assert reader.read_range(layer, 0, len(data)) == data
    assert blob.asked and max(blob.asked) <= 2 * len(member) + (128 << 10)
