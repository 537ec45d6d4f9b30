"""The prefetch trace a first start records beside its read-ahead, on a layer read through
its published index (``lazyfs.blobs.published_heard``): what the read-ahead fetched is
recorded when and as the program reads it, also when the reader serves it from what it kept."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers, open_published
from lazyfs.blobs.inflated import interval
from lazyfs.blobs.published_ahead import compressed_span
from lazyfs.blobs.trace_run import Recorder, replay_steps, unrecorded
from lazyfs.index.model import IndexEntry
from lazyfs.index.trace import load_trace
from providers.digest import Digest
from tests.support.blob_sources import Watched
from tests.support.published_artifacts import Built

KEY = f"{Digest('sha256:' + 'ab' * 32)}@{'c' * 32}"


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "tar"])
def test_what_read_ahead_fetched_is_recorded_when_the_program_reads_it(
    tmp_path: Path, compress: bool
) -> None:
    (tmp_path / "built").mkdir()
    built = Built(tmp_path / "built", compress)
    blobs = Watched(built.blobs)
    opened = open_published(built.layers_dir, built.layer, blobs)
    assert opened is not None
    index, reader, _ = opened
    files = {e.path[0]: e for e in index.entries if e.path[0] in ("small", "noise", "text")}
    recorder = blobs.watcher = Recorder(tmp_path / "first", KEY, settle=3600.0, limit=3600.0)

    def read(source: PublishedLayers, entry: IndexEntry) -> list[tuple[Digest, int, int]]:
        """Read ``entry`` whole, in 128 KiB reads as the kernel asks; the ranges fetched."""
        blobs.fetched.clear()
        for at in range(entry.offset, entry.offset + entry.size, 1 << 17):
            assert source.read_range(built.digest, at, min(1 << 17, entry.offset + entry.size - at))
        return list(blobs.fetched)

    ahead: list[tuple[Digest, int, int]] = []

    def read_ahead() -> None:  # a thread of its own, as the predictor's
        unrecorded()
        ahead.extend(read(reader, files["text"]))

    thread = threading.Thread(target=read_ahead)
    thread.start()
    thread.join()
    assert ahead
    read(reader, files["text"])  # the program: kept, so nothing fetched, but heard
    recorder.serving()
    assert recorder.finish() is not None
    # The same reads by the program alone, on a fresh reader: what its trace keeps.
    alone_blobs = Watched(built.blobs)
    alone = alone_blobs.watcher = Recorder(tmp_path / "alone", KEY)
    fresh = open_published(built.layers_dir, built.layer, alone_blobs)
    assert fresh is not None
    read(fresh[1], files["text"])
    alone.serving()
    assert alone.finish() is not None
    trace, want = load_trace(tmp_path / "first", KEY), load_trace(tmp_path / "alone", KEY)
    assert trace is not None and want is not None
    assert {r.digest for r in trace.reads} == {r.digest for r in want.reads}
    covered = {
        (r.digest, u) for r in trace.reads for u in range(r.offset >> 16, (r.end - 1 >> 16) + 1)
    }
    wanted = {
        (r.digest, u) for r in want.reads for u in range(r.offset >> 16, (r.end - 1 >> 16) + 1)
    }
    assert wanted <= covered


def _units(ranges: list[tuple[Digest, int, int]]) -> set[tuple[Digest, int]]:
    """The 64 KiB units of their blobs ``ranges`` reach: what a trace counts in."""
    return {(d, u) for d, at, size in ranges for u in range(at >> 16, (at + size - 1 >> 16) + 1)}


@pytest.mark.parametrize(("name", "ahead"), [("text", 2), ("noise", 3)])
def test_what_the_program_did_without_is_recorded_for_the_replay(
    tmp_path: Path, name: str, ahead: int
) -> None:
    # Read-ahead inflates interval n - 1 of a file (and the check parses the file's tar
    # headers); the program then reads the file from interval n on, inflating n from
    # n - 1's tail. A replay, with no read-ahead before the program, inflates n from its
    # window and parses the headers: the trace must hold both. ("noise" is random bytes:
    # each interval's window a 64 KiB unit of its own, far from the headers'.)
    (tmp_path / "built").mkdir()
    built = Built(tmp_path / "built", True)
    blobs = Watched(built.blobs)
    opened = open_published(built.layers_dir, built.layer, blobs)
    assert opened is not None
    index, reader, _ = opened
    text = next(e for e in index.entries if e.path == (name,))
    bounds = built.data.bounds
    number = interval(bounds, text.offset) + ahead
    assert interval(bounds, text.offset + text.size - 1) > number
    recorder = blobs.watcher = Recorder(tmp_path / "first", KEY, settle=3600.0, limit=3600.0)

    def read_ahead() -> None:  # a thread of its own, as the predictor's
        unrecorded()
        reader.read_range(built.digest, bounds[number - 1], bounds[number] - bounds[number - 1])

    thread = threading.Thread(target=read_ahead)
    thread.start()
    thread.join()
    end = text.offset + text.size

    grid = 1 << 14  # the program's reads, small: the first is all in interval n
    first = -(-bounds[number] // grid) * grid
    assert first + grid <= bounds[number + 1]

    def program(source: PublishedLayers) -> None:
        for at in range(first, end, grid):
            got = source.read_range(built.digest, at, min(grid, end - at))
            assert got == built.tar[at : min(at + grid, end)]

    program(reader)
    recorder.serving()
    assert recorder.finish() is not None
    trace = load_trace(tmp_path / "first", KEY)
    assert trace is not None
    # The replay: the program alone on a fresh reader; all it fetches, the trace names.
    again = Watched(built.blobs)
    fresh = open_published(built.layers_dir, built.layer, again)
    assert fresh is not None
    program(fresh[1])
    assert again.fetched
    assert _units(again.fetched) <= _units(
        [(r.digest, r.offset, r.end - r.offset) for r in trace.reads]
    )


def test_an_interval_read_ahead_kept_while_the_program_waited_is_recorded(
    tmp_path: Path,
) -> None:
    # The program reads across intervals k and k + 1; while it waits on the fetch of k's
    # span (a round trip), read-ahead reads k + 1, inflates it and keeps it. The program
    # then uses k + 1 as kept: the trace must name it, as a replay fetches it.
    (tmp_path / "built").mkdir()
    built = Built(tmp_path / "built", True)
    bounds, k = built.data.bounds, 3
    span_k = compressed_span(built.data, k)[0]
    reader: PublishedLayers | None = None

    def read_ahead() -> None:  # a thread of its own, as the predictor's
        unrecorded()
        assert reader is not None
        reader.read_range(built.digest, bounds[k + 1], 4096)

    class RoundTrip(Watched):
        """Read-ahead runs, whole, while the program's fetch of span k is on its way."""

        waited = False

        def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
            if digest == built.digest and offset == span_k and not self.waited:
                self.waited = True
                thread = threading.Thread(target=read_ahead)
                thread.start()
                thread.join()
            return super().read_range(digest, offset, length)

    blobs = RoundTrip(built.blobs)
    reader = PublishedLayers({built.digest: built.data}, blobs)  # no asks: nothing chained
    recorder = blobs.watcher = Recorder(tmp_path / "first", KEY, settle=3600.0, limit=3600.0)
    at = bounds[k + 1] - 4096
    assert reader.read_range(built.digest, at, 8192) == built.tar[at : at + 8192]
    assert blobs.waited
    recorder.serving()
    assert recorder.finish() is not None
    trace = load_trace(tmp_path / "first", KEY)
    assert trace is not None
    again = Watched(built.blobs)  # the replay's program, alone
    assert PublishedLayers({built.digest: built.data}, again).read_range(built.digest, at, 8192)
    assert _units(again.fetched) <= _units(
        [(r.digest, r.offset, r.end - r.offset) for r in trace.reads]
    )


def test_a_replay_without_read_ahead_needs_no_interval_the_trace_lacks(tmp_path: Path) -> None:
    # Read-ahead reads "text" first: the check parses its tar headers, at the end of
    # "noise", inflating that interval h from its window. The program then reads the start
    # of "noise" (asking for its intervals up to h at once: h is not chained, its window was
    # asked) and of "text" (heard: h's span and window). A replay has no read-ahead: its
    # read of "noise" chains h to the interval before, and the check of "text" would walk
    # back from h through intervals the trace lacks. The replay asks for h's window
    # (``Asks.replayed``: the trace reaches h before the interval before it).
    (tmp_path / "built").mkdir()
    built = Built(tmp_path / "built", True)
    blobs = Watched(built.blobs)
    opened = open_published(built.layers_dir, built.layer, blobs)
    assert opened is not None
    index, reader, _ = opened
    noise, text = (next(e for e in index.entries if e.path == (n,)) for n in ("noise", "text"))
    bounds = built.data.bounds
    assert interval(bounds, noise.offset + noise.size - 1) > interval(bounds, noise.offset) + 2
    recorder = blobs.watcher = Recorder(tmp_path / "first", KEY, settle=3600.0, limit=3600.0)

    def read_ahead() -> None:  # a thread of its own, as the predictor's
        unrecorded()
        reader.read_range(built.digest, text.offset, 4096)

    thread = threading.Thread(target=read_ahead)
    thread.start()
    thread.join()
    reader.close()

    def program(source: PublishedLayers) -> None:
        for at in (noise.offset, text.offset):
            assert source.read_range(built.digest, at, 4096) == built.tar[at : at + 4096]

    program(reader)
    recorder.serving()
    assert recorder.finish() is not None
    trace = load_trace(tmp_path / "first", KEY)
    assert trace is not None
    again = Watched(built.blobs)  # the replay's program, alone, the trace replayed
    again.replaying = replay_steps(trace, {d: len(b) for d, b in built.blobs.items()})
    fresh = open_published(built.layers_dir, built.layer, again)
    assert fresh is not None
    program(fresh[1])
    assert _units(again.fetched) <= _units(
        [(r.digest, r.offset, r.end - r.offset) for r in trace.reads]
    )
