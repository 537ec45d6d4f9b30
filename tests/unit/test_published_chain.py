"""Intervals inflated from the tail of the interval before, not from their window
(``lazyfs.blobs.gzip_remote``): a checkpoint's window is the 32 KiB of tar stream before
it, which an inflated (and checked) interval before it holds.  A file of many intervals
then costs its first interval's window, not one per interval."""

from __future__ import annotations

import errno
import logging
import random
import zlib
from dataclasses import replace

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers, open_published
from lazyfs.blobs.inflated import Kept, interval
from lazyfs.index.artifact import WINDOW
from lazyfs.index.model import IndexEntry
from providers.digest import Digest
from providers.errors import TemporaryFailure
from tests.support.blob_sources import Prefetching
from tests.support.images import Entry
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


PIECE = 1 << 17  # what the kernel asks of a FUSE file in one read, at most


def _read_file(reader: PublishedLayers, digest: Digest, entry: IndexEntry) -> bytes:
    """``entry``'s data read as the mount reads it: in the kernel's pieces from its start."""
    end = entry.offset + entry.size
    return b"".join(
        reader.read_range(digest, at, min(PIECE, end - at))
        for at in range(entry.offset, end, PIECE)
    )


def test_a_file_of_many_intervals_reads_one_window(gz: Built) -> None:
    source = Prefetching(gz.blobs)
    reader, text = _opened(gz, source)
    bounds = gz.data.bounds
    first, last = interval(bounds, text.offset), interval(bounds, text.offset + text.size - 1)
    assert last - first >= 3
    start = text.offset
    assert _read_file(reader, gz.digest, text) == gz.tar[text.offset :][: text.size]
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


def _lines(count: int) -> bytes:
    return b"".join(b"line %d of a long file\n" % i for i in range(count))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A 30 MB file at the tests' checkpoint spacing: more intervals than the reader keeps
    (random bytes: each interval about a spacing long)."""
    data = random.Random(7).randbytes(30_000_000)
    return Built(tmp_path_factory.mktemp("big"), True, [Entry("big", data=data)])


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Checkpoints about as dense as an index may have them (a window apart), as a hostile
    one may."""
    files = [Entry("big", data=_lines(250_000))]
    return Built(tmp_path_factory.mktemp("dense"), _flushed, files, spacing=WINDOW + 1)


def _flushed(tar: bytes) -> bytes:
    """``tar`` as gzip, a deflate block ending every ``WINDOW`` + 1 bytes: a checkpoint may
    be made at each."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    step = WINDOW + 1
    parts = [packer.compress(tar[at : at + step]) + packer.flush(zlib.Z_FULL_FLUSH)
             for at in range(0, len(tar), step)]  # fmt: skip
    return b"".join(parts) + packer.flush()


def _read_through(built: Built) -> tuple[PublishedLayers, IndexEntry]:
    """A reader that has read the file whole, in the chunk cache's pieces: every interval
    after the first asked for without its window, chained to the one before."""
    source = Prefetching(built.blobs)
    opened = open_published(built.layers_dir, built.layer, source)
    assert opened is not None
    index, reader, _ = opened
    entry = next(e for e in index.entries if e.path == ("big",))
    assert _read_file(reader, built.digest, entry) == built.tar[entry.offset :][: entry.size]
    return reader, entry


def test_an_interval_chained_far_back_past_what_is_kept_reads(big: Built) -> None:
    reader, entry = _read_through(big)
    bounds = big.data.bounds
    first, last = interval(bounds, entry.offset), interval(bounds, entry.offset + entry.size - 1)
    assert last - first > 400
    # The reader keeps the last 16 MiB inflated; other reads evict the rest in time.
    reader.close()
    at = entry.offset + entry.size - 4096
    before = reader.inflations
    assert reader.read_range(big.digest, at, 4096) == big.tar[at : at + 4096]
    # Inflated from the interval before, back along the chain, but no further than the
    # chain's bytes: then the first one's window.
    shortest = min(bounds[n + 1] - bounds[n] for n in range(first, last))
    assert reader.inflations - before <= reader.chain_bytes // shortest + 2


def test_dense_checkpoints_chained_back_inflate_a_bounded_few(dense: Built) -> None:
    reader, entry = _read_through(dense)
    bounds = dense.data.bounds
    assert interval(bounds, entry.offset + entry.size - 1) - interval(bounds, entry.offset) > 150
    reader.close()  # nothing inflated kept
    at = entry.offset + entry.size - 100
    before = reader.inflations
    assert reader.read_range(dense.digest, at, 100) == dense.tar[at : at + 100]
    # At most 2 MiB of tar stream back: about 64 intervals here, not the file's 150 and more.
    assert reader.inflations - before <= (2 << 20) // WINDOW + 2


def test_a_forged_interval_in_a_chain_is_a_logged_eio(
    dense: Built, caplog: pytest.LogCaptureFixture
) -> None:
    # A hostile index whose interval k's digest is wrong: a read of an interval after it,
    # asked for without its window, inflates back through k, and gets EIO, saying why.
    opened = open_published(dense.layers_dir, dense.layer, Prefetching(dense.blobs))
    assert opened is not None and dense.data.points is not None
    index = opened[0]
    entry = next(e for e in index.entries if e.path == ("big",))
    bounds, points = dense.data.bounds, list(dense.data.points)
    first = interval(bounds, entry.offset)
    forged = first + 2
    points[forged] = replace(points[forged], sha256="0" * 64)
    data = replace(dense.data, points=tuple(points))
    reader = PublishedLayers(
        {dense.digest: data},
        Prefetching(dense.blobs),
        entries={dense.digest: lambda: index.entries},
    )
    assert reader.read_range(dense.digest, entry.offset, 10) == dense.tar[entry.offset :][:10]
    reader.close()  # nothing inflated kept: a read further on walks back to the first
    with pytest.raises(OSError) as raised, caplog.at_level(logging.ERROR):
        reader.read_range(dense.digest, bounds[first + 4], 10)
    assert raised.value.errno == errno.EIO
    assert "inflated interval" in caplog.text and "does not match" in caplog.text


class _Cache(Prefetching):
    """The cache daemon: once ``gone``, the registry is unreachable, and a range it did not
    fetch before (read or asked ahead) fails as such a read does."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        super().__init__(blobs)
        self.gone = False
        self.had: list[tuple[str, Digest, int, int]] = []

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        if self.gone and not any(
            blob == digest and at <= offset and offset + length <= at + size
            for _kind, blob, at, size in self.had
        ):
            raise TemporaryFailure(f"registry unreachable: {digest} [{offset}, +{length})")
        return super().read_range(digest, offset, length)

    def go(self) -> None:
        self.had = list(self.events)
        self.gone = True


def _read_end_after_registry_gone(built: Built, reader: PublishedLayers, source: _Cache,
                                  entry: IndexEntry) -> None:  # fmt: skip
    source.go()
    reader.close()  # the mount's inflated intervals turned over
    at = entry.offset + entry.size - 4096
    assert reader.read_range(built.digest, at, 4096) == built.tar[at : at + 4096]


def test_a_file_read_whole_reads_again_with_the_registry_gone(big: Built) -> None:
    # Read whole, every interval after the first asked for without its window: a walk
    # back from the file's end stops at the chain bound, at an interval whose window
    # was asked for then, not at one whose window no one fetched.
    source = _Cache(big.blobs)
    opened = open_published(big.layers_dir, big.layer, source)
    assert opened is not None
    index, reader, _ = opened
    entry = next(e for e in index.entries if e.path == ("big",))
    assert _read_file(reader, big.digest, entry) == big.tar[entry.offset :][: entry.size]
    _read_end_after_registry_gone(big, reader, source, entry)


def test_a_file_read_in_order_without_asks_reads_again_with_the_registry_gone(
    big: Built,
) -> None:
    # No asks ahead: each interval inflated from the tail of the one before, kept.
    source = _Cache(big.blobs)
    opened = open_published(big.layers_dir, big.layer, source)
    assert opened is not None
    index = opened[0]
    reader = PublishedLayers({big.digest: big.data}, source)
    entry = next(e for e in index.entries if e.path == ("big",))
    for at in range(entry.offset, entry.offset + entry.size, 1 << 20):
        assert reader.read_range(big.digest, at, 1 << 20) == big.tar[at : at + (1 << 20)]
    _read_end_after_registry_gone(big, reader, source, entry)


def test_an_interval_whose_window_was_asked_is_never_chained_after(big: Built) -> None:
    # Interval u is read first (its window asked, those after it chained back to it),
    # then u - 2 (its window asked, u - 1 chained to it); u is inflated again from u - 1's
    # tail. Were u chained then, a walk back from a later t would pass u and stop at the
    # bound at u - 1, whose window no one fetched.
    source = _Cache(big.blobs)
    opened = open_published(big.layers_dir, big.layer, source)
    assert opened is not None
    index, reader, _ = opened
    reader.reach_bytes = 8 << 20  # reads of one interval: u - 1 not asked
    entry = next(e for e in index.entries if e.path == ("big",))
    bounds = big.data.bounds
    u = interval(bounds, entry.offset) + 100
    budget = reader.chain_bytes
    t = next(t for t in range(u + 1, len(bounds)) if bounds[t] - bounds[u - 2] > budget)
    assert bounds[t] - bounds[u - 1] <= budget and interval(bounds, entry.offset + entry.size) > t

    def read(number: int) -> None:
        at = -(-bounds[number] // 512) * 512
        assert reader.read_range(big.digest, at, 512) == big.tar[at : at + 512]

    read(u)
    read(u - 2)
    reader.close()
    read(u - 1)  # inflates u - 2, then u - 1 from its tail: kept
    read(u)  # from u - 1's tail
    source.go()
    reader.close()
    read(t)


class _Fleeting(Kept):
    """The reader's inflated intervals, where another thread's keeping evicts those in
    ``fleeting`` right after they are looked up once."""

    def __init__(self) -> None:
        super().__init__()
        self.fleeting: set[int] = set()

    def get(self, digest: Digest, start: int) -> bytes | None:
        found = super().get(digest, start)
        if found is not None and start in self.fleeting:
            self.fleeting.discard(start)
            self._kept.pop((digest, start))
            self._bytes -= len(found)
        return found


def test_a_walk_that_stopped_at_an_interval_kept_inflates_from_it_when_evicted_since(
    big: Built,
) -> None:
    # Read whole (every interval chained but where a walk back would pass the bound), the
    # registry then gone: interval m is read (inflated back along its chain), then m + 3.
    # The walk back from m + 3 stops at m + 1, as m is kept; m is evicted before m + 1 is
    # inflated from its tail. m + 1's window was never fetched: it must inflate from the m
    # the walk found, not ask for its window.
    source = _Cache(big.blobs)
    opened = open_published(big.layers_dir, big.layer, source)
    assert opened is not None
    index, reader, _ = opened
    kept = reader._intervals = _Fleeting()  # the LRU, turned over by other threads
    entry = next(e for e in index.entries if e.path == ("big",))
    assert _read_file(reader, big.digest, entry) == big.tar[entry.offset :][: entry.size]
    source.go()
    reader.close()
    bounds = big.data.bounds
    m = interval(bounds, entry.offset) + 40
    assert reader._asks.is_chained(big.digest, m + 1) and reader._asks.is_chained(big.digest, m + 3)
    assert reader.read_range(big.digest, bounds[m], 100) == big.tar[bounds[m] :][:100]
    kept.fleeting.add(bounds[m])
    at = bounds[m + 3] + 100
    assert reader.read_range(big.digest, at, 100) == big.tar[at : at + 100]
