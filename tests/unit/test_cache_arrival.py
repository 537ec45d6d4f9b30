"""Chunks of an upstream answer land as they arrive, not when the whole answer is in."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from lazyfs.cache.arrival import Stopped, cut
from lazyfs.cache.layout import ChunkKey
from providers.errors import BadImage, TemporaryFailure
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource, StreamingSource, fetcher


def delivered(source: FakeSource, offset: int, length: int) -> list[tuple[int, bytes]]:
    """What ``cut`` hands on for the range, checked against the count it returns."""
    out: list[tuple[int, bytes]] = []
    got = cut(source, BLOB, offset, length, SIZE, lambda i, b: out.append((i, b)))
    assert got == sum(len(b) for _, b in out)
    return out


def test_pieces_are_handed_on_as_whole_chunks_in_order() -> None:
    # Pieces of 5 bytes do not meet chunk bounds: each chunk is whole all the same.
    assert delivered(StreamingSource(), 32, 48) == [(2, DATA[32:48]), (3, DATA[48:64]),
                                                    (4, DATA[64:80])]  # fmt: skip


def test_the_last_chunk_of_a_blob_is_short() -> None:
    assert delivered(StreamingSource(), 480, 64) == [(30, DATA[480:496]), (31, DATA[496:512])]
    assert delivered(StreamingSource(), 496, 16 + 16)[-1] == (31, DATA[496:512])
    source = StreamingSource([(496, 10)])  # the blob ends 6 bytes into its last chunk
    assert delivered(source, 496, 32) == [(31, DATA[496:506])]


def test_a_whole_blob_answer_gives_only_the_range_and_is_closed_after_it() -> None:
    source = StreamingSource([(0, 100), (100, 100), (200, 100), (300, 212)])
    assert delivered(source, 96, 32) == [(6, DATA[96:112]), (7, DATA[112:128])]
    assert source.yielded == 2 and source.closed  # the rest of the blob was not read


def test_a_source_that_cannot_stream_is_read_whole() -> None:
    assert delivered(FakeSource(), 16, 32) == [(1, DATA[16:32]), (2, DATA[32:48])]


def test_a_range_of_part_chunks_is_refused() -> None:
    with pytest.raises(ValueError, match="whole 16-byte chunks"):
        cut(FakeSource(), BLOB, 16, 40, SIZE, lambda i, b: None)


def test_an_answer_that_skips_bytes_of_the_range_is_refused() -> None:
    source = StreamingSource([(0, 16), (20, 12)])
    out: list[tuple[int, bytes]] = []
    with pytest.raises(BadImage, match="skipped bytes 16 to 20"):
        cut(source, BLOB, 0, 32, SIZE, lambda i, b: out.append((i, b)))
    assert out == [(0, DATA[0:16])]
    assert source.closed


def test_a_broken_answer_hands_on_the_chunks_that_came_whole_then_raises() -> None:
    broken = TemporaryFailure("connection reset")
    source = StreamingSource([(0, 16), (16, 10)], breaks=broken)
    out: list[tuple[int, bytes]] = []
    with pytest.raises(TemporaryFailure):
        cut(source, BLOB, 0, 48, SIZE, lambda i, b: out.append((i, b)))
    assert out == [(0, DATA[0:16])]  # not the 10 bytes of chunk 1


def test_stopped_ends_the_transfer_before_the_next_piece_and_says_so() -> None:
    # Not a short count: that would read as the blob's end.
    source = StreamingSource([(0, 16), (16, 16), (32, 16)])
    out: list[tuple[int, bytes]] = []
    with pytest.raises(Stopped):
        cut(source, BLOB, 0, 48, SIZE, lambda i, b: out.append((i, b)), lambda: len(out) >= 1)
    assert out == [(0, DATA[0:16])]
    assert source.yielded == 2 and source.closed


def test_stopped_at_the_end_hands_on_no_part_chunk() -> None:
    source = StreamingSource([(0, 16), (16, 5)])  # the blob ends 5 bytes into chunk 1
    out: list[tuple[int, bytes]] = []
    with pytest.raises(Stopped):  # once the answer is all in
        cut(source, BLOB, 0, 32, SIZE, lambda i, b: out.append((i, b)), source.sent.is_set)
    assert out == [(0, DATA[0:16])]


async def test_a_reader_of_the_first_chunk_is_answered_before_the_answer_ends(
    tmp_path: Path,
) -> None:
    # One request for chunks 0-3 (the reader's and read-ahead's); the source sends
    # chunk 0, then holds the rest until the reader has its bytes.
    source = StreamingSource([(0, 16), (16, 16), (32, 16), (48, 16)], hold=1)
    async with fetcher(tmp_path, readahead=(0, 0)) as f:
        try:
            f.prefetch(source, BLOB, [(0, 64)])
            got = None
            with trio.move_on_after(30):  # a bound, not a delay: without it this waits forever
                got = await f.read(source, BLOB, 0, 16)
            assert got == DATA[0:16]
            assert source.yielded == 1  # the rest of the answer is still on its way
        finally:
            source.go.set()  # before the fetcher waits for its fetch: a failure fails at once
        assert await f.read(source, BLOB, 16, 48) == DATA[16:64]
    assert source.calls == [(0, 64)]


async def test_chunks_that_came_before_a_break_are_kept_and_the_rest_fail(
    tmp_path: Path,
) -> None:
    broken = TemporaryFailure("connection reset")
    source = StreamingSource([(0, 16), (16, 16), (32, 5)], breaks=broken)
    async with fetcher(tmp_path, readahead=(0, 0)) as f:
        with pytest.raises(TemporaryFailure):
            await f.read(source, BLOB, 0, 64)
        assert [f.cache.contains(ChunkKey(BLOB, i)) for i in range(4)] == [True, True, False,
                                                                            False]  # fmt: skip
        assert f.fetched_bytes == 32
        assert await f.read(source, BLOB, 0, 32) == DATA[0:32]  # no fetch: they are in
    assert source.calls == [(0, 64)]
