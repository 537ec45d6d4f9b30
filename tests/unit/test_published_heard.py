"""The prefetch trace a first start records beside its read-ahead, on a layer read through
its published index (``lazyfs.blobs.published_heard``): what the read-ahead fetched is
recorded when and as the program reads it, also when the reader serves it from what it kept."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lazyfs.blobs.gzip_remote import PublishedLayers, open_published
from lazyfs.blobs.trace_run import Recorder, unrecorded
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
