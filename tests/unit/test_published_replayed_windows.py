"""Which checkpoint windows a replayed trace holds (``Asks.replayed``), and at what cost.

A window is held when its bytes lie within the trace's ranges of the
windows blob, which the replay asks as they are. A trace's ranges are
hostile (a published trace, or a damaged one): a range outside the blob
holds nothing, and thousands of them over the blob cost a sort, not a walk
per range.
"""

from __future__ import annotations

from lazyfs.blobs.published_asks import Asks
from lazyfs.blobs.trace_run import UNIT
from lazyfs.index.artifact import Point, Span
from lazyfs.index.published import PublishedData
from providers.digest import Digest

LAYER = Digest("sha256:" + "1" * 64)
WINDOWS = Digest("sha256:" + "2" * 64)
UNITS = 64  # the windows blob's length, in trace units
# One checkpoint window per 8 units, each inside its own unit; the first point has none.
DATA = PublishedData(
    points=tuple(
        Point(n * 1000, n * 4096, 0, "0" * 64, Span(n * 8 * UNIT, 100, "0" * 64) if n else None)
        for n in range(UNITS // 8)
    ),
    spans=(),
    size=UNITS * 1000,
    tar_size=UNITS * 4096,
    windows=WINDOWS,
    windows_size=UNITS * UNIT,
)


def _replayed(steps: list[tuple[Digest, list[tuple[int, int]]]]) -> set[int]:
    asks = Asks(None)  # type: ignore[arg-type]  # replayed asks the source for nothing
    asks.replayed({LAYER: DATA}, steps)
    return {n for _, n in asks._replayed}


def test_the_windows_a_trace_holds_are_noted_and_no_others() -> None:
    held = [(8 * UNIT, 100), (3 * 8 * UNIT - 10, 60), (3 * 8 * UNIT + 50, 50)]  # 1 and 3
    partly = [(5 * 8 * UNIT + 50, 10), (6 * 8 * UNIT, 99)]  # in 5's unit, short of 6's end
    outside = [(UNITS * UNIT, UNIT), (UNITS * UNIT + 7, 1), (-UNIT, 2 * UNIT), (16 * UNIT, 0)]
    other = Digest("sha256:" + "3" * 64)
    steps = [(WINDOWS, held + partly + outside), (other, [(2 * 8 * UNIT, UNIT)])]
    assert _replayed(steps) == {1, 3}
    assert _replayed([(WINDOWS, [(0, UNITS * UNIT)])]) == set(range(1, UNITS // 8))


def test_ranges_that_meet_hold_what_they_cover_together() -> None:
    # Thousands of them, each 150 bytes every 100: no window lies within one range alone.
    steps = [(WINDOWS, [(n * 100, 150) for n in range(UNITS * UNIT // 100 + 1)])]
    assert _replayed(steps) == set(range(1, UNITS // 8))
