"""Byte spans of a blob: (start, end) pairs, end exclusive, and sets of them. Pure."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

Span = tuple[int, int]
_PAST = 1 << 64  # an end past any offset: (start, _PAST) sorts after every span at start


def union(spans: Iterable[Span]) -> list[Span]:
    """``spans`` as ascending disjoint spans, those that meet or overlap made one; empty
    spans left out."""
    out: list[Span] = []
    for start, end in sorted(spans):
        if start >= end:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def holding(spans: list[Span], start: int, end: int) -> Span | None:
    """The span of ``spans`` (ascending, disjoint) that holds all of [start, end), if one does."""
    at = bisect.bisect_right(spans, (start, _PAST)) - 1  # the last that begins by ``start``
    return spans[at] if at >= 0 and spans[at][0] <= start and end <= spans[at][1] else None


def covers(spans: list[Span], start: int, end: int) -> bool:
    """Whether ``spans`` (as ``union`` gives them) hold every byte of [start, end)."""
    return start >= end or holding(spans, start, end) is not None


class SpanSet:
    """Spans added one by one, kept as ``union`` keeps them. Not thread-safe."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def add(self, start: int, end: int) -> bool:
        """Add [start, end); whether it held a byte not held before."""
        if covers(self.spans, start, end):
            return False
        spans = self.spans
        first = bisect.bisect_left(spans, (start, start))
        if first > 0 and spans[first - 1][1] >= start:
            first -= 1  # the one before reaches it: merged
        last = first
        while last < len(spans) and spans[last][0] <= end:
            last += 1
        if last > first:
            start, end = min(start, spans[first][0]), max(end, spans[last - 1][1])
        spans[first:last] = [(start, end)]
        return True
