"""The chunk table's text form: read back equal, and refused whole when damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
