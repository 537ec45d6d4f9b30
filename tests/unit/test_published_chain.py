"""Intervals inflated from the tail of the interval before, not from their window
(``lazyfs.blobs.gzip_remote``): a checkpoint's window is the 32 KiB of tar stream before
it, which an inflated (and checked) interval before it holds.  A file of many intervals
then costs its first interval's window, not one per interval."""

from __future__ import annotations

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers, open_published
from lazyfs.blobs.inflated import interval
from lazyfs.index.model import IndexEntry
from tests.support.blob_sources import Prefetching
from tests.support.published_artifacts import Built


@pytest.fixture(scope="module")
def gz(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("gz"), True)


def _opened(gz: Built, source: Prefetching) -> tuple[PublishedLayers, IndexEntry]:
    opened = open_published(gz.layers_dir, gz.layer, source)
    assert opened is not None
    index, reader, _ = opened
    return reader, next(e for e in index.entries if e.path == ("text",))


def _windows(gz: Built, source: Prefetching, kind: str) -> list[tuple[int, int]]:
    return [(e[2], e[3]) for e in source.events if e[0] == kind and e[1] == gz.data.windows]


def test_a_file_of_many_intervals_reads_one_window(gz: Built) -> None:
    source = Prefetching(gz.blobs)
    reader, text = _opened(gz, source)
    bounds = gz.data.bounds
    first, last = interval(bounds, text.offset), interval(bounds, text.offset + text.size - 1)
    assert last - first >= 3
    grid = reader.grid
    start = text.offset - text.offset % grid
    got = b"".join(
        reader.read_range(gz.digest, at, grid) for at in range(start, text.offset + text.size, grid)
    )
    assert got[text.offset - start :][: text.size] == gz.tar[text.offset :][: text.size]
    # The first interval read inflates from its window; every later one from the one before.
    assert gz.data.points is not None
    window = gz.data.points[interval(bounds, start)].window
    assert window is not None
    assert _windows(gz, source, "read") == [(window.offset, window.length)]
    assert set(_windows(gz, source, "prefetch")) == {(window.offset, window.length)}


def test_an_interval_after_one_kept_reads_no_window(gz: Built) -> None:
    source = Prefetching(gz.blobs)
    reader = PublishedLayers({gz.digest: gz.data}, source)  # no entries: no asks ahead
    bounds = gz.data.bounds
    number = 3
    assert reader.read_range(gz.digest, bounds[number], 10) == gz.tar[bounds[number] :][:10]
    assert reader.read_range(gz.digest, bounds[number + 1], 10) == gz.tar[bounds[number + 1] :][:10]
    assert gz.data.points is not None
    window = gz.data.points[number].window
    assert window is not None
    assert _windows(gz, source, "read") == [(window.offset, window.length)]


def test_an_interval_asked_without_its_window_inflates_the_one_before_first(gz: Built) -> None:
    source = Prefetching(gz.blobs)
    reader, text = _opened(gz, source)
    bounds = gz.data.bounds
    first, last = interval(bounds, text.offset), interval(bounds, text.offset + text.size - 1)
    reader.read_range(gz.digest, text.offset, 10)  # asks for the file's intervals at once
    asked = set(_windows(gz, source, "prefetch"))
    reader.close()  # nothing inflated kept
    # The file's last interval first: inflated from the ones before it, which came
    # with it, back to the first asked, whose window was asked with it.
    at = bounds[last] + 100
    assert last > first + 1
    assert reader.read_range(gz.digest, at, 100) == gz.tar[at : at + 100]
    assert set(_windows(gz, source, "read")) <= asked == set(_windows(gz, source, "prefetch"))
    assert len(asked) == 1
