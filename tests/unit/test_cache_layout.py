"""The cache directory's layout, and reading chunks straight from it as a mount does."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.cache.layout import ChunkFiles, ChunkKey, Layout, chunk_indices
from providers.digest import Digest

BLOB = Digest("sha256:" + "3f" * 32)
SIZE = 16  # a small chunk size keeps the tables readable


@pytest.mark.parametrize(
    ("offset", "length", "indices"),
    [
        (0, 0, []),
        (5, 0, []),
        (0, 1, [0]),
        (0, 16, [0]),
        (0, 17, [0, 1]),
        (15, 2, [0, 1]),
        (16, 16, [1]),
        (40, 30, [2, 3, 4]),
    ],
)
def test_chunk_indices(offset: int, length: int, indices: list[int]) -> None:
    assert list(chunk_indices(offset, length, SIZE)) == indices


def test_chunk_indices_refuses_negative_ranges() -> None:
    with pytest.raises(ValueError):
        chunk_indices(-1, 4, SIZE)
    with pytest.raises(ValueError):
        chunk_indices(0, -4, SIZE)


def test_paths_follow_the_documented_layout(tmp_path: Path) -> None:
    layout = Layout(tmp_path, 1 << 20)
    assert layout.chunk_path(ChunkKey(BLOB, 0x2A)) == (
        tmp_path / "chunks-1048576" / "sha256" / ("3f" * 32) / "0000002a"
    )
    assert layout.lock_path == tmp_path / "lock"
    assert layout.tmp_dir == tmp_path / "tmp"


digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(
    lambda h: Digest(f"sha256:{h}")
) | st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: Digest(f"sha512:{h}"))
keys = st.builds(ChunkKey, digests, st.integers(min_value=0, max_value=(1 << 64) - 1))


@given(keys)
def test_a_chunk_path_names_its_key(key: ChunkKey) -> None:
    layout = Layout(Path("/cache"), SIZE)
    assert layout.key_of(layout.chunk_path(key)) == key


@pytest.mark.parametrize(
    "relative",
    [
        "chunks-16/sha256/" + "3f" * 32,
        "chunks-16/sha256/" + "3f" * 32 + "/2a",
        "chunks-16/sha256/" + "3f" * 32 + "/0000002A",
        "chunks-16/sha256/" + "3f" * 32 + "/00000002a",  # one spelling per chunk
        "chunks-16/sha256/" + "3f" * 32 + "/1" + "0" * 16,
        "chunks-16/sha256/" + "3f" * 31 + "/00000000",
        "chunks-16/md5/" + "3f" * 16 + "/00000000",
        "chunks-32/sha256/" + "3f" * 32 + "/00000000",
        "tmp/chunk.x",
        "chunks-16/sha256/" + "3f" * 32 + "/00000000/x",
    ],
)
def test_other_paths_name_no_chunk(relative: str) -> None:
    layout = Layout(Path("/cache"), SIZE)
    assert layout.key_of(Path("/cache") / relative) is None


def test_chunk_names_widen_past_8_digits() -> None:
    layout = Layout(Path("/cache"), SIZE)
    assert layout.chunk_path(ChunkKey(BLOB, 1 << 40)).name == "10000000000"
    with pytest.raises(ValueError):
        layout.chunk_path(ChunkKey(BLOB, -1))


def test_a_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Layout(Path("/cache"), 0)


def put(layout: Layout, blob: bytes, indices: set[int]) -> None:
    """Chunk files as the daemon leaves them (written directly: the reader is under test)."""
    for index in indices:
        data = blob[index * SIZE : (index + 1) * SIZE]
        if data:
            path = layout.chunk_path(ChunkKey(BLOB, index))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


BLOB_DATA = bytes(range(50))  # chunks 0-2 whole, chunk 3 of 2 bytes


@pytest.mark.parametrize(
    ("cached", "offset", "length", "expected"),
    [
        ({0, 1, 2, 3}, 0, 50, BLOB_DATA),
        ({0, 1, 2, 3}, 0, 100, BLOB_DATA),  # short only at the blob's end
        ({0, 1, 2, 3}, 14, 4, BLOB_DATA[14:18]),
        ({1}, 16, 16, BLOB_DATA[16:32]),
        ({1}, 17, 3, BLOB_DATA[17:20]),
        ({0, 2}, 0, 40, None),  # chunk 1 missing
        ({0, 1}, 10, 30, None),
        ({3}, 48, 10, BLOB_DATA[48:]),
        ({3}, 50, 10, b""),  # the blob ends inside the short chunk 3
        ({3}, 64, 10, b""),  # a short chunk 3 shows the blob ends before chunk 4
        ({3}, 90, 10, None),  # chunk 4 would tell, and it cannot exist: ask the daemon
        (set(), 0, 1, None),
        ({0}, 0, 0, b""),
    ],
)
def test_read_range_from_chunk_files(
    tmp_path: Path, cached: set[int], offset: int, length: int, expected: bytes | None
) -> None:
    layout = Layout(tmp_path, SIZE)
    put(layout, BLOB_DATA, cached)
    assert ChunkFiles(layout).read_range(BLOB, offset, length) == expected


@given(
    blob=st.binary(min_size=1, max_size=100),
    cached=st.sets(st.integers(min_value=0, max_value=7)),
    offset=st.integers(min_value=0, max_value=120),
    length=st.integers(min_value=0, max_value=120),
)
def test_read_range_is_exact_or_a_miss(
    tmp_path_factory: pytest.TempPathFactory,
    blob: bytes,
    cached: set[int],
    offset: int,
    length: int,
) -> None:
    layout = Layout(tmp_path_factory.mktemp("cache"), SIZE)
    put(layout, blob, cached)
    got = ChunkFiles(layout).read_range(BLOB, offset, length)
    if got is not None:
        assert got == blob[offset : offset + length]
    # A range inside the blob with its chunks cached is never a miss. (Past
    # the end, only a short chunk can tell where the end is: the table above.)
    if offset + length <= len(blob) and set(chunk_indices(offset, length, SIZE)) <= cached:
        assert got == blob[offset : offset + length]


def test_reading_a_chunk_marks_it_used(tmp_path: Path) -> None:
    layout = Layout(tmp_path, SIZE)
    put(layout, BLOB_DATA, {0})
    path = layout.chunk_path(ChunkKey(BLOB, 0))
    os.utime(path, (1_000_000, 1_000_000))
    assert ChunkFiles(layout).read_chunk(ChunkKey(BLOB, 0)) == BLOB_DATA[:16]
    assert path.stat().st_mtime > 1_000_000


def test_a_reader_holds_a_shared_lock_while_it_reads(tmp_path: Path, monkeypatch) -> None:
    layout = Layout(tmp_path, SIZE)
    put(layout, BLOB_DATA, {0})
    seen: list[bool] = []
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        # An evictor's exclusive lock fails while the reader reads.
        probe = os.open(layout.chunk_path(ChunkKey(BLOB, 0)), os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(False)
        except BlockingIOError:
            seen.append(True)
        finally:
            os.close(probe)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    assert ChunkFiles(layout).read_chunk(ChunkKey(BLOB, 0)) == BLOB_DATA[:16]
    assert seen and all(seen)


def test_blob_chunks_lists_what_is_there(tmp_path: Path) -> None:
    layout = Layout(tmp_path, SIZE)
    files = ChunkFiles(layout)
    assert list(files.blob_chunks(BLOB)) == []
    put(layout, BLOB_DATA, {0, 2})
    assert list(files.blob_chunks(BLOB)) == [ChunkKey(BLOB, 0), ChunkKey(BLOB, 2)]
