"""A miss through a published index asks at once for what its file's reads will inflate
besides the file's own intervals (``lazyfs.blobs.gzip_remote``): the interval holding the
tar headers its check parses first (``headers_before``).  It was a round trip of its own
after the read's."""

from __future__ import annotations

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers, open_published
from lazyfs.blobs.inflated import interval
from lazyfs.blobs.published_ahead import headers_before
from lazyfs.index.model import IndexEntry
from providers.digest import Digest
from tests.support.blob_sources import Prefetching
from tests.support.published_artifacts import Built

# Files' data [start, end) in a tar stream: 100-300, 1000-5000, 5512-5600.
STARTS = [100, 1000, 5512]
ENDS = [300, 5000, 5600]


@pytest.mark.parametrize(
    ("offset", "end", "headers"),
    [
        (0, 50, None),  # no file reached
        (150, 160, (0, 100)),  # inside the first file: the headers from the stream's start
        (90, 200, (0, 90)),  # the part of them before the read
        (2000, 2100, (512, 1000)),  # inside the second: from the first's data end, in blocks
        (600, 700, None),  # between files, reaching none
        (600, 1200, (512, 600)),
        (5000, 5600, None),  # the headers of the third are all inside the read
        (5550, 5560, (5120, 5512)),
        (6000, 6100, None),  # past every file
    ],
)
def test_the_headers_a_read_checks_first(
    offset: int, end: int, headers: tuple[int, int] | None
) -> None:
    assert headers_before(STARTS, ENDS, offset, end) == headers


def test_no_files_no_headers() -> None:
    assert headers_before([], [], 10, 20) is None


@pytest.fixture(scope="module")
def gz(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("gz"), True)


class Calls(Prefetching):
    """``Prefetching``, that also says which ``read_range`` of the reader each event is in."""

    def __init__(self, blobs: dict[Digest, bytes]) -> None:
        super().__init__(blobs)
        self.call = 0
        self.calls: list[int] = []

    def prefetch(self, digest: Digest, offset: int, length: int) -> int:
        self.calls.append(self.call)
        return super().prefetch(digest, offset, length)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.calls.append(self.call)
        return super().read_range(digest, offset, length)

    def asked_before(self, at: int, blob: Digest, offset: int, length: int) -> bool:
        """Whether a prefetch among the first ``at`` events holds the range."""
        return any(
            e[:2] == ("prefetch", blob) and e[2] <= offset and offset + length <= e[2] + e[3]
            for e in self.events[:at]
        )


def _reader(gz: Built) -> tuple[PublishedLayers, Calls, dict[str, IndexEntry]]:
    source = Calls(gz.blobs)
    opened = open_published(gz.layers_dir, gz.layer, source)
    assert opened is not None
    index, reader, _ = opened
    return reader, source, {"/".join(e.path): e for e in index.entries}


def _read(reader: PublishedLayers, source: Calls, gz: Built, offset: int, length: int) -> None:
    source.call += 1
    assert reader.read_range(gz.digest, offset, length) == gz.tar[offset : offset + length]


def test_a_files_headers_before_the_read_are_asked_with_it(gz: Built) -> None:
    # A read of the last 4 KiB of "noise" lies in one interval, its headers at the
    # stream's start in another.
    reader, source, files = _reader(gz)
    noise, bounds = files["noise"], gz.data.bounds
    end = noise.offset + noise.size
    lo, hi = end - 4096, end
    assert interval(bounds, lo) == interval(bounds, hi - 1)
    assert interval(bounds, noise.offset - 512) < interval(bounds, lo)
    _read(reader, source, gz, lo, hi - lo)
    # Every range it read was asked for before the first read: one round trip.
    first = next(i for i, e in enumerate(source.events) if e[0] == "read")
    reads = [e[1:] for e in source.events if e[0] == "read"]
    assert len({r[0] for r in reads}) == 2  # the layer and its windows
    assert all(source.asked_before(first, *r) for r in reads), source.events


def test_a_files_headers_are_asked_for_once(gz: Built) -> None:
    reader, source, files = _reader(gz)
    reader.spans.max_bytes = 1  # no verified span kept but the last: none is held back from asking
    noise, bounds = files["noise"], gz.data.bounds
    head = interval(bounds, noise.offset - 512)
    first_span = gz.data.spans[0]
    for number in (4, 2):  # two misses inside the file, neither in its head's interval
        at = bounds[number] + 4096 - bounds[number] % 4096
        assert interval(bounds, at) == number != head
        reader.close()  # nothing inflated kept: each read misses
        _read(reader, source, gz, at, 4096)
    heads = {
        call
        for e, call in zip(source.events, source.calls, strict=True)
        if e[0] == "prefetch" and e[1] == gz.digest and e[2] <= first_span.offset < e[2] + e[3]
    }
    assert heads == {1}, source.events
