"""What a reader through a published index asks a caching source for ahead of its reads
(``lazyfs.blobs.published_ahead``): everything an interval's inflating reads, before the
first of those reads; and a trace replay that leaves the windows blob to the mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers
from lazyfs.blobs.published_ahead import (
    PIECE_BYTES,
    ask_for,
    interval_needs,
    merged,
    reads_windows,
)
from lazyfs.blobs.trace_run import client_steps
from lazyfs.cache.client import CacheClient, remote_blob
from lazyfs.cache.pieces import MAX_PIECE
from lazyfs.index.trace import Read, Trace
from providers.digest import Digest
from providers.errors import NotFound, TemporaryFailure
from tests.support.blob_sources import Prefetching
from tests.support.published_artifacts import Built

A = Digest("sha256:" + "a" * 64)
B = Digest("sha256:" + "b" * 64)


@pytest.fixture(scope="module")
def gz(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("gz"), True)


def test_every_range_an_interval_reads_is_asked_for_before_the_first_read(gz: Built) -> None:
    assert gz.data.points is not None and len(gz.data.points) > 3
    for number in range(len(gz.data.points)):
        source = Prefetching(gz.blobs)
        reader = PublishedLayers({gz.digest: gz.data}, source)
        assert (
            reader.read_range(gz.digest, gz.data.bounds[number], 1)
            == (gz.tar[gz.data.bounds[number] : gz.data.bounds[number] + 1])
        )
        asked = [e[1:] for e in source.events if e[0] == "prefetch"]
        reads = [e[1:] for e in source.events if e[0] == "read"]
        first_read = next(i for i, e in enumerate(source.events) if e[0] == "read")
        assert all(e[0] == "prefetch" for e in source.events[:first_read]), source.events
        assert asked and reads
        for blob, offset, length in reads:
            assert any(
                b == blob and o <= offset and offset + length <= o + n for b, o, n in asked
            ), (number, (blob, offset, length), asked)
        # One range of the layer, and its window (none for the first interval).
        windows = [a for a in asked if a[0] == gz.data.windows]
        assert len(asked) - len(windows) == 1 and len(windows) == (number > 0), asked


def test_a_tar_layer_or_an_interval_past_the_last_needs_nothing(gz: Built) -> None:
    assert gz.data.points is not None
    assert interval_needs(gz.digest, gz.data, len(gz.data.points)) == []
    assert interval_needs(gz.digest, gz.data, -1) == []


def test_ranges_that_meet_are_asked_for_as_one() -> None:
    needs = [(A, 0, 10), (B, 5, 5), (A, 10, 5), (A, 30, 5), (B, 0, 5), (A, 12, 1)]
    assert merged(needs) == [(A, 0, 15), (B, 0, 10), (A, 30, 5)]


def test_a_trace_replay_leaves_the_windows_blob_to_the_mount(gz: Built, tmp_path: Path) -> None:
    """The trace names the windows it read; the mount asks for those its intervals need, as
    pieces (``Asks.replayed``), not the chunks around them the replay would bring."""
    assert gz.data.windows is not None and gz.data.points is not None
    client = CacheClient(tmp_path / "cache", {gz.digest: remote_blob("r.invalid", "app", gz.layer)})
    window = gz.data.points[1].window
    assert window is not None
    trace = Trace(
        f"{A}@{'c' * 32}",
        (Read(gz.digest, 0, 100), Read(gz.data.windows, window.offset, window.length)),
    )
    assert client_steps(client, trace) == [(gz.digest, [(0, 100)])]
    reads_windows(client, gz.digest, gz.data)  # the layer opened: its windows blob known
    assert client_steps(client, trace) == [(gz.digest, [(0, 100)])]
    windows, layer = client.blobs[gz.data.windows], client.blobs[gz.digest]
    assert windows.exact and windows.piece and windows.origin == layer.origin
    assert windows.size == gz.data.windows_size
    # Told again (another layer of the same index opened): the same blob, kept.
    client.add_blob(gz.data.windows, gz.digest, 1)
    assert client.blobs[gz.data.windows] is windows


def test_asks_end_at_the_first_the_source_refuses() -> None:
    """A daemon gone answers none of them, each after a wait of its own: one is enough."""
    asked: list[tuple[Digest, int, int]] = []

    class Gone:
        def prefetch(self, digest: Digest, offset: int, length: int) -> int:
            asked.append((digest, offset, length))
            raise TemporaryFailure("the cache daemon is unreachable")

    assert not ask_for(Gone(), [(A, 0, 10), (A, 100, 10), (B, 0, 10)])  # type: ignore[arg-type]
    assert asked == [(A, 0, 10)]


def test_asks_go_on_past_one_blob_the_source_does_not_know() -> None:
    asked: list[tuple[Digest, int, int]] = []

    class Partial:
        def prefetch(self, digest: Digest, offset: int, length: int) -> int:
            asked.append((digest, offset, length))
            if digest == B:
                raise NotFound(f"blob {B} is not one this mount reads remotely", digest=B)
            return 1

    assert not ask_for(Partial(), [(B, 0, 10), (A, 0, 10)])  # type: ignore[arg-type]
    assert asked == [(B, 0, 10), (A, 0, 10)]
    assert ask_for(Partial(), [(A, 50, 10)])  # type: ignore[arg-type]


def test_the_piece_bound_is_the_daemon_s() -> None:
    # A tripwire: lazyfs.blobs may not import the daemon's package, so the bound is twice.
    assert PIECE_BYTES == MAX_PIECE
