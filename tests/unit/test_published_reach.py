"""How far a miss through a published index asks ahead: to the end of the files it reads
(``file_reach``), in intervals, bounded by compressed bytes (``intervals_to``); and the
reader asking for them in one go (``lazyfs.blobs.gzip_remote``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.blobs.gzip_remote import PublishedLayers, open_published
from lazyfs.blobs.inflated import interval
from lazyfs.blobs.published_ahead import compressed_span, file_reach, intervals_to
from lazyfs.index.artifact import Point, Span
from lazyfs.index.model import IndexEntry
from lazyfs.index.published import PublishedData
from providers.digest import Digest
from providers.errors import TemporaryFailure
from tests.support.blob_sources import Prefetching
from tests.support.published_artifacts import Built

# Files' data [start, end) in a tar stream: 100-300, 1000-5000, 5512-5600.
STARTS = [100, 1000, 5512]
ENDS = [300, 5000, 5600]


@pytest.mark.parametrize(
    ("offset", "length", "reach"),
    [
        (0, 50, 50),  # headers before any file: nothing past the read
        (0, 200, 200),  # a header, then the first file's head: half the read, not more
        (90, 100, 300),  # a header, then more than half the read of the first file
        (150, 10, 300),  # inside the first file: to its end
        (250, 1000, 1250),  # the first file's tail, the second's head: the read's end
        (910, 200, 5000),  # the second file starts in the read and holds most of it
        (1200, 100, 5000),  # inside the second file
        (1000, 10, 5000),  # at the second file's first byte
        (4999, 10, 5009),  # its last byte, a header after
        (5000, 512, 5512),  # only the header between the second and third
        (4900, 700, 5600),  # the second's tail, a header, the third whole
        (6000, 100, 6100),  # past every file
        (5590, 100, 5690),  # the last file ends inside the read
    ],
)
def test_a_read_reaches_the_end_of_the_file_it_is_for(offset: int, length: int, reach: int) -> None:
    assert file_reach(STARTS, ENDS, offset, length) == reach


def test_no_files_reach_nothing_past_the_read() -> None:
    assert file_reach([], [], 10, 5) == 15


def _data(sizes: list[int], windows: list[int], tar_step: int = 1000) -> PublishedData:
    """Published data of intervals whose compressed spans are ``sizes`` bytes, windows
    ``windows`` bytes (the first interval has none), each ``tar_step`` of tar stream."""
    points, offset, window_at = [], 0, 0
    for number, size in enumerate(sizes):
        window = None
        if number:
            window = Span(window_at, windows[number], "0" * 64)
            window_at += windows[number]
        points.append(Point(offset, number * tar_step, 0, "0" * 64, window))
        offset += size
    spans = tuple(Span(p.offset, s, "0" * 64) for p, s in zip(points, sizes, strict=True))
    return PublishedData(
        tuple(points), spans, offset, tar_step * len(sizes), Digest("sha256:" + "f" * 64),
        window_at,
    )  # fmt: skip


SIZES = [400, 300, 300, 300, 300, 300]
WINDOWS = [0, 100, 100, 100, 100, 100]


@pytest.mark.parametrize(
    ("first", "reach", "budget", "last"),
    [
        (1, 1001, 10_000, 1),  # the file ends in the missed interval
        (1, 4500, 10_000, 4),  # to the interval holding the file's last byte
        (1, 4000, 10_000, 3),  # a file ending at an interval's bound: not the next
        (1, 99_999, 10_000, 5),  # past the stream's end: its last interval
        (1, 6000, 800, 2),  # 400 bytes an interval: two fit in 800
        (1, 6000, 799, 1),  # the missed interval alone
        (1, 6000, 10, 1),  # the missed interval, whatever the budget
        (0, 3000, 700, 0),  # the first interval (400, no window) and 400 more: over
        (0, 3000, 800, 1),
    ],
)
def test_the_intervals_asked_stop_at_the_files_end_or_the_budget(
    first: int, reach: int, budget: int, last: int
) -> None:
    assert intervals_to(_data(SIZES, WINDOWS), first, reach, budget) == last


def test_a_tar_layer_asks_for_nothing_more() -> None:
    data = PublishedData(None, (Span(0, 10, "0" * 64),), 10, 10)
    assert intervals_to(data, 0, 10, 1 << 20) == 0


@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=30),
    window=st.integers(0, 500),
    first=st.integers(0, 29),
    reach=st.integers(1, 40_000),
    budget=st.integers(0, 50_000),
)
def test_asked_intervals_hold_the_reach_or_fit_the_budget(
    sizes: list[int], window: int, first: int, reach: int, budget: int
) -> None:
    data = _data(sizes, [window] * len(sizes))
    first = min(first, len(sizes) - 1)
    last = intervals_to(data, first, reach, budget)
    assert first <= last < len(sizes)
    wanted = max(first, interval(data.bounds, min(reach, data.bounds[-1]) - 1))
    assert last <= wanted
    cost = sum(_cost(data, n, window) for n in range(first, last + 1))
    assert last == first or cost <= budget
    if last < wanted:  # stopped by the budget: one more would not have fit
        assert cost + _cost(data, last + 1, window) > budget


def _cost(data: PublishedData, number: int, window: int) -> int:
    start, end = compressed_span(data, number)
    return end - start + (window if number else 0)


@pytest.fixture(scope="module")
def gz(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("gz"), True)


def _opened(gz: Built, source: Prefetching, **options: int) -> tuple[PublishedLayers, IndexEntry]:
    opened = open_published(gz.layers_dir, gz.layer, source)
    assert opened is not None
    index, reader, _ = opened
    for name, value in options.items():
        setattr(reader, name, value)
    return reader, next(e for e in index.entries if e.path == ("text",))


def test_a_miss_asks_for_the_rest_of_its_file_at_once(gz: Built) -> None:
    source = Prefetching(gz.blobs)
    # Reads at the file's own offsets, as a mount's: nothing of the file before it is
    # read, so nothing of it is asked for.
    reader, text = _opened(gz, source)
    bounds = gz.data.bounds
    first, last = interval(bounds, text.offset), interval(bounds, text.offset + text.size - 1)
    assert last - first >= 3
    got = b"".join(
        reader.read_range(gz.digest, at, 1 << 17)
        for at in range(text.offset, text.offset + text.size, 1 << 17)
    )[: text.size]
    assert got == gz.tar[text.offset :][: text.size]
    asked = [e[1:] for e in source.events if e[0] == "prefetch"]
    # First, one range of the layer from the missed interval to the file's
    # last, and one of their windows; what each interval asks again when it
    # inflates is inside them (the daemon fetches nothing twice).
    start = compressed_span(gz.data, first)[0]
    end = compressed_span(gz.data, last)[1]
    layer_asks = [a for a in asked if a[0] == gz.digest]
    assert layer_asks[0] == (gz.digest, start, end - start), asked
    assert asked[1][0] == gz.data.windows, asked
    assert all(start <= a[1] and a[1] + a[2] <= end for a in layer_asks), asked
    # Every layer byte read was asked for first.
    for blob, offset, length in (e[1:] for e in source.events if e[0] == "read"):
        if blob == gz.digest:
            assert start <= offset and offset + length <= end + 1


class FailingFirst(Prefetching):
    """A caching source whose first prefetch fails (the daemon away for a moment)."""

    def prefetch(self, digest: Digest, offset: int, length: int) -> int:
        super().prefetch(digest, offset, length)
        if len(self.events) == 1:
            raise TemporaryFailure("the cache daemon is restarting")
        return 1


def test_an_ask_that_failed_is_made_again_by_each_interval_as_it_inflates(gz: Built) -> None:
    source = FailingFirst(gz.blobs)
    reader, text = _opened(gz, source)
    bounds = gz.data.bounds
    first, last = interval(bounds, text.offset), interval(bounds, text.offset + text.size - 1)
    got = b"".join(
        reader.read_range(gz.digest, at, 1 << 17)
        for at in range(text.offset, text.offset + text.size, 1 << 17)
    )[: text.size]
    assert got == gz.tar[text.offset :][: text.size]
    # Each later interval's span and window are asked for before either is
    # read: one round trip for both, not two in a row.
    for number in range(first + 1, last + 1):
        span = compressed_span(gz.data, number)
        at = next(
            i for i, e in enumerate(source.events)
            if e[:2] == ("read", gz.digest) and e[2] < span[1] and span[0] < e[2] + e[3]
        )  # fmt: skip
        assert any(
            e[:2] == ("prefetch", gz.digest) and e[2] <= span[0] and span[1] <= e[2] + e[3]
            for e in source.events[1:at]
        ), (number, source.events)


def test_the_budget_bounds_what_one_miss_asks_for(gz: Built) -> None:
    source = Prefetching(gz.blobs)
    reader, text = _opened(gz, source, reach_bytes=1)
    reader.read_range(gz.digest, text.offset, 1 << 17)
    asked = [e[2:] for e in source.events if e[0] == "prefetch" and e[1] == gz.digest]
    # Each interval the read inflates asks for its own span, as without entries: no more.
    assert gz.data.points is not None
    spans = {compressed_span(gz.data, n) for n in range(len(gz.data.points))}
    assert asked and all((o, o + n) in spans for o, n in asked), asked
    touched = {interval(gz.data.bounds, at) for at in (text.offset, text.offset + (1 << 17) - 1)}
    assert len(asked) <= len(touched) + 1


def test_a_reader_without_entries_asks_per_interval_as_before(gz: Built) -> None:
    source = Prefetching(gz.blobs)
    reader = PublishedLayers({gz.digest: gz.data}, source)
    number = 2
    reader.read_range(gz.digest, gz.data.bounds[number], 1)
    asked = [e[1:] for e in source.events if e[0] == "prefetch" and e[1] == gz.digest]
    start, end = compressed_span(gz.data, number)
    assert asked == [(gz.digest, start, end - start)]
