"""Which intervals a replayed trace chains, and which windows it has asked for (``Asks.replayed``).

The replay brings the spans the trace names; the mount asks for the
windows of the intervals that need one, as exact ranges (the daemon's
pieces), as it opens.  An interval the trace reads whole right after the
one before it is chained to it, as its first start inflated it from that
one's tail; any other needs its window.  A trace's ranges are hostile (a
published trace, or a damaged one): cut to the blob, walked within a bound.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator

import pytest

from lazyfs.blobs import published_asks
from lazyfs.blobs.published_ahead import CHAIN_BYTES, PIECE_BYTES
from lazyfs.blobs.published_asks import REPLAY_WALK, REPLAYED_WINDOWS, UNIT, Asks
from lazyfs.index.artifact import WINDOW, Point, Span
from lazyfs.index.published import PublishedData
from providers.digest import Digest
from providers.errors import TemporaryFailure

LAYER = Digest("sha256:" + "1" * 64)
WINDOWS = Digest("sha256:" + "2" * 64)
OTHER = Digest("sha256:" + "3" * 64)
COUNT = 64  # intervals of the layer
TAR = 2 * WINDOW  # each interval's tar bytes: long enough for its tail to be the next's window
WINDOW_BYTES = 13_000  # each window's, in the windows blob


def _data(count: int = COUNT, tar: int = TAR, units: int = 1) -> PublishedData:
    """Interval ``n``'s span is ``units`` units of the layer's blob from unit ``n * units``;
    its window the ``n``-th of the windows blob (the first interval has none)."""
    windows = [Span(n * WINDOW_BYTES, WINDOW_BYTES, "0" * 64) if n else None for n in range(count)]
    return PublishedData(
        points=tuple(
            Point(n * units * UNIT, n * tar, 0, "0" * 64, windows[n]) for n in range(count)
        ),
        spans=(),
        size=count * units * UNIT,
        tar_size=count * tar,
        windows=WINDOWS,
        windows_size=count * WINDOW_BYTES,
    )


class _Source:
    """A caching source: what it was asked to prefetch."""

    def __init__(self) -> None:
        self.asked: list[tuple[Digest, int, int]] = []

    def prefetch(self, digest: Digest, offset: int, length: int) -> int:
        self.asked.append((digest, offset, length))
        return 1


def _replayed(
    steps: list[tuple[Digest, list[tuple[int, int]]]], data: PublishedData | None = None
) -> tuple[Asks, list[int]]:
    """The asks after the replay of ``steps``, and the intervals whose windows were asked."""
    source = _Source()
    asks = Asks(source)  # type: ignore[arg-type]
    asks.replayed({LAYER: data or _data()}, steps)
    asked: list[int] = []
    for blob, offset, length in source.asked:
        assert blob == WINDOWS and 0 < length <= PIECE_BYTES
        assert offset % WINDOW_BYTES == 0 and length % WINDOW_BYTES == 0
        asked += range(offset // WINDOW_BYTES, (offset + length) // WINDOW_BYTES)
    return asks, asked


def _chained(asks: Asks) -> list[int]:
    return sorted(n for digest, n in asks.chained if digest == LAYER)


def test_intervals_read_in_a_row_are_chained_and_a_run_s_first_has_its_window() -> None:
    # Intervals 3 to 6 in one range, then 10 to 11, then 1 alone.
    steps = [(LAYER, [(3 * UNIT, 4 * UNIT), (10 * UNIT, 2 * UNIT), (UNIT, UNIT)])]
    asks, asked = _replayed(steps)
    assert asked == [3, 10, 1]  # in the trace's order
    assert _chained(asks) == [4, 5, 6, 11]
    # A window asked is never chained after; a chained one is asked without it on a miss.
    assert all(asks.is_chained(LAYER, n) for n in (4, 5, 6, 11))
    assert not asks.is_chained(LAYER, 3)


def test_the_order_is_the_trace_s_not_the_blob_s() -> None:
    # Interval 5 first, then 4: 5 was read before the one before it, so it needs its window.
    asks, asked = _replayed([(LAYER, [(5 * UNIT, UNIT)]), (LAYER, [(4 * UNIT, UNIT)])])
    assert asked == [4, 5] and _chained(asks) == []


@pytest.mark.parametrize("units", [1, 2])
def test_an_interval_after_one_held_in_part_has_its_window(units: int) -> None:
    # The last byte of interval 7, then interval 8 whole. The replay brings those bytes
    # alone (the rest of 7's last unit is not fetched: ``lazyfs.cache.partial``), so 8
    # cannot chain to 7, even where 7 is one unit long.
    steps = [(LAYER, [(8 * units * UNIT - 1, units * UNIT + 1)])]
    asks, asked = _replayed(steps, _data(units=units))
    assert asked == [7, 8]
    assert _chained(asks) == []


def test_an_interval_held_by_ranges_that_meet_chains() -> None:
    # Interval 7 in two ranges that meet mid-unit, then 8: 7 is held whole, so 8 chains.
    steps = [(LAYER, [(7 * UNIT, UNIT // 3)]), (LAYER, [(7 * UNIT + UNIT // 3, UNIT)])]
    asks, asked = _replayed(steps)
    assert asked == [7] and _chained(asks) == [8]


def test_the_first_interval_needs_no_window_and_the_next_chains_to_it() -> None:
    asks, asked = _replayed([(LAYER, [(0, 3 * UNIT)])])
    assert asked == [] and _chained(asks) == [1, 2]


def test_a_chain_longer_than_its_bound_asks_a_window_again() -> None:
    links = CHAIN_BYTES // TAR  # intervals a walk back may inflate, the one before included
    asks, asked = _replayed([(LAYER, [(UNIT, (links + 3) * UNIT)])])
    assert asked == [1, links + 2]
    assert _chained(asks) == [n for n in range(2, links + 4) if n != links + 2]


def test_intervals_too_short_for_a_tail_window_are_never_chained() -> None:
    asks, asked = _replayed([(LAYER, [(0, 4 * UNIT)])], _data(tar=WINDOW // 2))
    assert asked == [1, 2, 3] and _chained(asks) == []


def test_ranges_outside_the_layer_or_of_other_blobs_reach_nothing() -> None:
    outside = [(COUNT * UNIT, UNIT), (COUNT * UNIT + 7, 1), (-UNIT, 2 * UNIT), (UNIT, 0)]
    steps = [(LAYER, outside), (OTHER, [(2 * UNIT, UNIT)]), (WINDOWS, [(0, 4 * WINDOW_BYTES)])]
    asks, asked = _replayed(steps)
    assert asked == [] and _chained(asks) == []


def test_at_most_so_many_windows_are_asked() -> None:
    count = REPLAYED_WINDOWS + 10
    # Every other interval: none chains, each needs its window. Then two in a row.
    steps = [(LAYER, [(n * UNIT, UNIT) for n in range(1, 2 * count, 2)])]
    steps.append((LAYER, [(2 * count * UNIT, 2 * UNIT)]))
    asks, asked = _replayed(steps, _data(count=2 * count + 2))
    assert asked == list(range(1, 2 * REPLAYED_WINDOWS, 2))
    # Nothing chained past them: a chain would end at a window no one asked for.
    assert _chained(asks) == []


@pytest.fixture
def walked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    counts: list[int] = []

    def counting(*args: int) -> range:
        found = builtins.range(*args)
        counts.append(len(found))
        return found

    monkeypatch.setattr(published_asks, "range", counting, raising=False)
    yield counts


def test_many_ranges_over_the_layer_are_walked_within_a_bound(walked: list[int]) -> None:
    # Thousands of ranges over the whole blob.
    asks, asked = _replayed([(LAYER, [(0, COUNT * UNIT)] * 5000)])
    bound = CHAIN_BYTES // TAR + 1  # the first past a chain's bound
    assert asked == [bound] and _chained(asks) == [n for n in range(1, COUNT) if n != bound]
    # The units and intervals were walked (the count counts), and within the bound.
    assert COUNT <= sum(walked) <= 2 * REPLAY_WALK * (2 * COUNT + 1) + 4 * COUNT


def test_a_miss_asks_no_window_the_replay_asked_for() -> None:
    source = _Source()
    asks = Asks(source)  # type: ignore[arg-type]
    data = _data()
    asks.replayed({LAYER: data}, [(LAYER, [(3 * UNIT, UNIT)])])
    assert source.asked == [(WINDOWS, 3 * WINDOW_BYTES, WINDOW_BYTES)]
    # A read of a file over intervals 3 and 4, before either is inflated.
    starts, ends = [3 * TAR], [5 * TAR]
    asks.miss(LAYER, data, starts, ends, 3 * TAR, 2 * TAR, budget=1 << 30,
              kept=lambda *_: None, unheld=lambda digest, data, needs: needs)  # fmt: skip
    asked = source.asked[1:]
    assert asked and all(blob == LAYER for blob, _, _ in asked)  # spans only: no window again


def test_windows_the_source_did_not_take_are_left_to_the_reads() -> None:
    """The daemon restarting as the layer opens: a miss asks for the windows then."""

    class Restarting(_Source):
        down = True  # for the first ask only

        def prefetch(self, digest: Digest, offset: int, length: int) -> int:
            super().prefetch(digest, offset, length)
            if self.down:
                self.down = False
                raise TemporaryFailure("the cache daemon is unreachable")
            return 1

    source = Restarting()
    asks = Asks(source)  # type: ignore[arg-type]
    data = _data()
    asks.replayed({LAYER: data}, [(LAYER, [(3 * UNIT, 2 * UNIT)])])
    assert source.asked == [(WINDOWS, 3 * WINDOW_BYTES, WINDOW_BYTES)]
    assert _chained(asks) == [4]  # chained still: a miss or the inflation asks for 3's window
    source.asked.clear()
    # A read of a file over intervals 3 and 4, its headers in interval 2 (a file before).
    starts, ends = [TAR, 3 * TAR], [2 * TAR + 100, 5 * TAR]
    asks.miss(LAYER, data, starts, ends, 3 * TAR, 2 * TAR, budget=1 << 30,
              kept=lambda *_: None, unheld=lambda digest, data, needs: needs)  # fmt: skip
    # As without a trace: 3 chained to 2, asked with it, and 2's window asked. Left as
    # replayed, 3 was neither chained nor had its window asked: a round trip of its own.
    assert asks.is_chained(LAYER, 3)
    assert (WINDOWS, 2 * WINDOW_BYTES, WINDOW_BYTES) in source.asked
