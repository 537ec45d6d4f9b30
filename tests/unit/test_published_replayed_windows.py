"""Which checkpoint windows a replayed trace holds (``Asks.replayed``), and at what cost.

A trace's ranges are hostile (a published trace, or a damaged one): the
windows blob's units they cover are counted once each, however many ranges
name them, and a range outside the blob holds nothing.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator

import pytest

from lazyfs.blobs import published_asks
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
    held = [(8 * UNIT, UNIT), (3 * 8 * UNIT + 50, 10)]  # the windows of points 1 and 3
    outside = [(UNITS * UNIT, UNIT), (UNITS * UNIT + 7, 1), (-UNIT, 2 * UNIT), (16 * UNIT, 0)]
    other = Digest("sha256:" + "3" * 64)
    assert _replayed([(WINDOWS, held + outside), (other, [(16 * UNIT, UNIT)])]) == {1, 3}
    assert _replayed([(WINDOWS, [(0, UNITS * UNIT)])]) == set(range(1, UNITS // 8))


@pytest.fixture
def units_walked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    walked: list[int] = []

    def counting(*args: int) -> range:
        found = builtins.range(*args)
        walked.append(len(found))
        return found

    monkeypatch.setattr(published_asks, "range", counting, raising=False)
    yield walked


def test_many_ranges_over_the_blob_walk_its_units_once(units_walked: list[int]) -> None:
    # Thousands of ranges over a large windows blob were thousands of times its units.
    steps = [(WINDOWS, [(0, UNITS * UNIT)] * 5000)]
    assert _replayed(steps) == set(range(1, UNITS // 8))
    # The windows blob's units were walked (the count counts), and each only once.
    assert UNITS <= sum(units_walked) <= 2 * UNITS
