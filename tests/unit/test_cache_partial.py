"""A replayed trace's partial chunks: asked and read as the parts the trace covers."""

from __future__ import annotations

from lazyfs.cache.partial import PartialChunks
from lazyfs.cache.pieces import ENTRY_COST
from providers.digest import Digest
from providers.spans import SpanSet, covers, union

BLOB = Digest("sha256:" + "ab" * 32)
OTHER = Digest("sha256:" + "cd" * 32)
C = 100  # bytes a chunk


def partial(steps: list[tuple[Digest, list[tuple[int, int]]]], size: int | None = 1000):
    return PartialChunks(steps, C, {BLOB: size, OTHER: size})


def test_chunks_covered_whole_are_asked_as_chunks_and_the_ends_as_pieces() -> None:
    # 50..350: chunk 0 from 50, 1 and 2 whole, 3 up to 350.
    p = partial([(BLOB, [(50, 300)])])
    assert p.requests(BLOB, [(50, 300)]) == [
        (True, [(50, 50)]),
        (False, [(100, 200)]),
        (True, [(300, 50)]),
    ]


def test_ranges_that_meet_inside_a_chunk_cover_it_whole() -> None:
    # Two steps, in the trace's order: together they cover chunks 1 and 2 whole.
    steps = [(BLOB, [(100, 150)]), (OTHER, [(0, 10)]), (BLOB, [(250, 50)])]
    p = partial(steps)
    assert p.requests(BLOB, [(100, 150)]) == [(False, [(100, 150)])]
    assert p.requests(BLOB, [(250, 50)]) == [(False, [(250, 50)])]
    assert p.split(BLOB, 240, 20) == [(240, 20, None)]


def test_a_part_two_ranges_reach_is_asked_once_and_whole() -> None:
    # Chunk 2 holds 200..230 and 260..300 of the trace: two parts, each of a piece.
    p = partial([(BLOB, [(150, 80), (260, 140)])])
    # 150..200 and 200..230 meet across chunk 2's edge: one piece.
    assert p.requests(BLOB, [(150, 80), (260, 140)]) == [
        (True, [(150, 80), (260, 40)]),
        (False, [(300, 100)]),
    ]
    # A range reaching a part asks for its piece (150..230 for 200..230), once.
    assert p.requests(BLOB, [(210, 10), (270, 5), (210, 10)]) == [(True, [(150, 80), (260, 40)])]
    # A read inside a part is its piece's; one across the pieces' gap, the chunk's.
    assert p.split(BLOB, 190, 20) == [(190, 20, (150, 230))]
    assert p.split(BLOB, 270, 10) == [(270, 10, (260, 300))]
    assert p.split(BLOB, 220, 50) == [(220, 50, None)]


def test_the_blob_s_short_last_chunk_covered_to_its_end_is_a_chunk() -> None:
    p = partial([(BLOB, [(900, 150)])], size=950)  # cut at the blob's end
    assert p.requests(BLOB, [(900, 150)]) == [(False, [(900, 150)])]
    unknown = partial([(BLOB, [(900, 50)])], size=None)  # no size: 900..950 is part of 9
    assert unknown.requests(BLOB, [(900, 50)]) == [(True, [(900, 50)])]


def test_a_read_inside_a_part_is_a_piece_and_any_other_is_read_as_chunks() -> None:
    p = partial([(BLOB, [(50, 300)])])
    assert p.split(BLOB, 60, 30) == [(60, 30, (50, 100))]
    assert p.split(BLOB, 40, 20) == [(40, 20, None)]  # before the part: the chunk's
    # Across the part's end into chunks covered whole, and on into chunk 3's part.
    assert p.split(BLOB, 80, 250) == [(80, 20, (50, 100)), (100, 200, None), (300, 30, (300, 350))]
    assert p.split(BLOB, 340, 20) == [(340, 20, None)]  # past 3's part
    assert p.split(OTHER, 60, 30) == [(60, 30, None)]  # not in the trace


def test_hostile_ranges_cost_their_ends_not_their_lengths() -> None:
    # A range of a terabyte: two partial chunks, and no walk over the chunks between.
    huge = (50, 10**12)
    p = partial([(BLOB, [huge, (-5, 10), (7, 0)])], size=None)
    assert p.requests(BLOB, [huge, (-5, 10), (7, 0)]) == [
        (True, [(50, 50)]),
        (False, [(100, 10**12 - 100)]),
        (True, [(10**12, 50)]),
    ]


def test_past_the_budget_partial_chunks_are_chunks_work() -> None:
    # In the trace's order: chunk 5's part (20 bytes), 1's (30), OTHER's 0 (10), 8's (40),
    # each costing the daemon ENTRY_COST besides.
    steps = [(BLOB, [(500, 20), (100, 30)]), (OTHER, [(0, 10)]), (BLOB, [(800, 40)])]
    p = PartialChunks(steps, C, {BLOB: 1000, OTHER: 1000}, max_bytes=55 + 2 * ENTRY_COST)
    assert p.requests(BLOB, [(500, 20), (100, 30)]) == [(True, [(500, 20), (100, 30)])]
    assert p.requests(OTHER, [(0, 10)]) == [(False, [(0, 10)])]  # 60 bytes: past the budget
    assert p.requests(BLOB, [(800, 40)]) == [(False, [(800, 40)])]
    assert p.split(BLOB, 810, 10) == [(810, 10, None)]


def test_past_so_many_parts_partial_chunks_are_chunks_work() -> None:
    steps = [(BLOB, [(i * C + 10, 20) for i in range(5)])]
    p = PartialChunks(steps, C, {BLOB: 1000}, max_parts=3)
    assert p.requests(BLOB, steps[0][1]) == [
        (True, [(10, 20), (110, 20), (210, 20)]),
        (False, [(310, 20), (410, 20)]),
    ]


def test_a_chunk_in_many_parts_is_fetched_whole() -> None:
    # Three ranges in chunk 0 (a hostile trace may name thousands): the chunk, not pieces.
    p = partial([(BLOB, [(0, 5), (10, 5), (20, 5), (150, 10), (170, 5)])])
    assert p.requests(BLOB, [(0, 5), (10, 5), (20, 5)]) == [(False, [(0, 5), (10, 5), (20, 5)])]
    assert p.requests(BLOB, [(150, 10), (170, 5)]) == [(True, [(150, 10), (170, 5)])]


def test_parts_that_meet_are_one_piece_only_up_to_a_piece_s_bound() -> None:
    big = 200 << 10  # chunks of 200 KiB: two parts meeting may pass MAX_PIECE (256 KiB)
    near, far = (big - 100_000, big + 100_000), (big - 150_000, big + 150_000)
    for (start, end), merged in ((near, True), (far, False)):
        p = PartialChunks([(BLOB, [(start, end - start)])], big, {BLOB: 4 * big})
        pieces = [(start, end - start)] if merged else [(start, big - start), (big, end - big)]
        assert p.requests(BLOB, [(start, end - start)]) == [(True, pieces)]


def test_no_trace_asks_everything_as_chunks() -> None:
    p = partial([])
    assert p.requests(BLOB, [(50, 10), (60, 40)]) == [(False, [(50, 50)])]
    assert p.split(BLOB, 50, 10) == [(50, 10, None)]


def test_spans_union_covers_and_a_set_says_what_is_new() -> None:
    assert union([(5, 9), (0, 3), (3, 4), (8, 12), (20, 20)]) == [(0, 4), (5, 12)]
    spans = union([(0, 4), (5, 12)])
    assert covers(spans, 0, 4) and covers(spans, 6, 12) and covers(spans, 3, 3)
    assert not covers(spans, 3, 6) and not covers(spans, 11, 13) and not covers([], 0, 1)
    seen = SpanSet()
    assert seen.add(10, 20) and seen.add(30, 40) and not seen.add(12, 18)
    assert seen.add(15, 35) and seen.spans == [(10, 40)]
    assert not seen.add(10, 40) and seen.add(40, 41) and seen.spans == [(10, 41)]
