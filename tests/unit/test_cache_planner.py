"""The fetch planner: missing chunks, merged into bounded requests, and the read-ahead detector."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.cache.planner import Fetch, Readahead, advance, plan, wanted_chunks


@pytest.mark.parametrize(
    ("ranges", "blob_size", "chunks"),
    [
        ([(0, 1)], None, [0]),
        ([(0, 0)], None, []),
        ([(10, 20), (15, 2)], None, [0, 1]),
        ([(0, 16), (48, 1)], None, [0, 3]),
        ([(40, 100)], 50, [2, 3]),
        ([(60, 10)], 50, []),  # past the end: nothing to fetch
    ],
)
def test_wanted_chunks(
    ranges: list[tuple[int, int]], blob_size: int | None, chunks: list[int]
) -> None:
    assert wanted_chunks(ranges, 16, blob_size) == chunks


@pytest.mark.parametrize(
    ("wanted", "have", "ahead", "limit", "last", "fetches"),
    [
        ([0], set(), [], 8, None, [Fetch(0, 1)]),
        ([0], {0}, [], 8, None, []),
        ([0, 1, 2, 3], set(), [], 8, None, [Fetch(0, 4)]),
        ([0, 1, 2, 3], {2}, [], 8, None, [Fetch(0, 2), Fetch(3, 1)]),
        ([3, 1, 2, 2], set(), [], 8, None, [Fetch(1, 3)]),
        (range(10), set(), [], 4, None, [Fetch(0, 4), Fetch(4, 4), Fetch(8, 2)]),
        ([0, 1], set(), [2, 3], 8, None, [Fetch(0, 2), Fetch(2, 2, ahead=True)]),
        ([0, 1], set(), [1, 2], 8, None, [Fetch(0, 2), Fetch(2, 1, ahead=True)]),
        ([0], {0}, [1, 2, 3], 2, None, [Fetch(1, 2, ahead=True), Fetch(3, 1, ahead=True)]),
        ([4, 5, 6], set(), [7, 8], 8, 5, [Fetch(4, 2)]),  # the blob ends in chunk 5
        ([], set(), [], 8, None, []),
    ],
)
def test_plan(
    wanted: list[int],
    have: set[int],
    ahead: list[int],
    limit: int,
    last: int | None,
    fetches: list[Fetch],
) -> None:
    assert plan(wanted, have, ahead=ahead, max_request_chunks=limit, last_chunk=last) == fetches


def test_a_request_holds_at_least_one_chunk() -> None:
    with pytest.raises(ValueError):
        plan([0], set(), max_request_chunks=0)


def test_fetch_span_is_in_blob_bytes() -> None:
    assert Fetch(3, 2).span(1 << 20) == (3 << 20, 2 << 20)
    assert list(Fetch(3, 2).chunks) == [3, 4]


chunk_sets = st.sets(st.integers(min_value=0, max_value=60), max_size=40)


@given(
    chunk_sets,
    chunk_sets,
    chunk_sets,
    st.integers(min_value=1, max_value=9),
    st.none() | st.integers(min_value=0, max_value=60),
)
def test_plan_fetches_each_missing_chunk_once_in_bounded_runs(
    wanted: set[int], have: set[int], ahead: set[int], limit: int, last: int | None
) -> None:
    fetches = plan(wanted, have, ahead=ahead, max_request_chunks=limit, last_chunk=last)
    fetched = [i for f in fetches for i in f.chunks]
    in_blob = {i for i in wanted | ahead if last is None or i <= last}
    assert sorted(fetched) == sorted(in_blob - have)  # every missing chunk, each once
    for fetch in fetches:
        assert 1 <= fetch.count <= limit
        # Nobody waits behind read-ahead: a request is all demand or all ahead.
        assert all((i in wanted) != fetch.ahead for i in fetch.chunks)
    for kind in (False, True):
        runs = [f for f in fetches if f.ahead == kind]
        for a, b in itertools.pairwise(runs):
            assert a.first + a.count <= b.first
            # Adjacent misses share a request unless it is full.
            if a.first + a.count == b.first:
                assert a.count == limit


def feed(reads: list[tuple[int, int]]) -> list[list[int]]:
    state: Readahead | None = None
    aheads = []
    for first, last in reads:
        state, ahead = advance(state, first, last, min_window=2, max_window=8)
        aheads.append(list(ahead))
    return aheads


@pytest.mark.parametrize(
    ("reads", "aheads"),
    [
        # A first read gets no read-ahead; a next chunk starts it, and each
        # miss at the end of the window doubles it, up to the maximum.
        (
            [(0, 0), (1, 1), (4, 4), (9, 9), (18, 18), (27, 27)],
            [
                [],
                [2, 3],
                [5, 6, 7, 8],
                list(range(10, 18)),
                list(range(19, 27)),
                list(range(28, 36)),
            ],
        ),
        # A miss inside the window (its fetch not landed yet) still counts.
        ([(0, 0), (1, 1), (2, 2)], [[], [2, 3], [3, 4, 5, 6]]),
        # A jump resets it.
        ([(0, 0), (1, 1), (40, 40), (41, 41)], [[], [2, 3], [], [42, 43]]),
        # Going back resets it.
        ([(5, 5), (6, 6), (2, 2)], [[], [7, 8], []]),
        # The same start again (another mount, same file) changes nothing.
        ([(0, 0), (1, 1), (1, 1), (4, 4)], [[], [2, 3], [], [5, 6, 7, 8]]),
        # Multi-chunk reads read ahead from their last chunk.
        ([(0, 3), (4, 7)], [[], [8, 9]]),
        # An empty read is no read.
        ([(0, 0), (3, 2), (1, 1)], [[], [], [2, 3]]),
    ],
)
def test_readahead(reads: list[tuple[int, int]], aheads: list[list[int]]) -> None:
    assert feed(reads) == aheads


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(0, 5)), max_size=30))
def test_readahead_stays_within_its_bounds(reads: list[tuple[int, int]]) -> None:
    state: Readahead | None = None
    for first, extra in reads:
        state, ahead = advance(state, first, first + extra, min_window=2, max_window=8)
        assert len(ahead) in (0, 2, 4, 8)
        assert not ahead or ahead.start == first + extra + 1
