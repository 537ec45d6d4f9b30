"""ChunkCache: exact ranges, one read per missing chunk, a bounded cache; resident reads."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from lazyfs.blobs.ranges import ByLayer, ChunkCache, LocalTars, open_layers
from lazyfs.index.model import LayerData
from providers.digest import Digest

LAYER = Digest("sha256:" + "1" * 64)
DATA = bytes(range(256)) * 40  # 10240 bytes


class Slow:
    """A TarRangeReader over DATA that counts its calls; a gated one waits for ``gate`` to read."""

    def __init__(self, *, gated: bool = False) -> None:
        self.calls: list[int] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        with self.lock:
            self.calls.append(offset)
        # A bound on the wait, not a delay: a test that never opens the gate fails.
        assert self.gate.wait(timeout=30), "the gate was never opened"
        return DATA[offset : offset + length]


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 1), (0, 10240), (1000, 3000), (4095, 2), (10000, 500), (20000, 5)]
)
async def test_reads_are_exact_and_short_only_at_the_end(offset: int, length: int) -> None:
    cache = ChunkCache(Slow(), chunk_size=1024)
    assert await cache.read(LAYER, offset, length) == DATA[offset : offset + length]


async def test_concurrent_misses_of_one_chunk_read_it_once() -> None:
    source = Slow(gated=True)
    cache = ChunkCache(source, chunk_size=1024)
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await cache.read(LAYER, 100, 10))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
        # Every reader is now waiting: one on the source, the others on it.
        await trio.testing.wait_all_tasks_blocked()
        source.gate.set()
    assert results == [DATA[100:110]] * 5 and source.calls == [0]


async def test_the_cache_stays_within_its_budget() -> None:
    source = Slow()
    cache = ChunkCache(source, chunk_size=1024, max_bytes=3000)
    await cache.read(LAYER, 0, len(DATA))
    assert len(source.calls) == 10
    await cache.read(LAYER, 9000, 100)  # recent: still there
    assert len(source.calls) == 10
    await cache.read(LAYER, 0, 100)  # long evicted
    assert len(source.calls) == 11


class Resident(Slow):
    """A Slow reader that answers ranges from ``cached`` without blocking, as a page cache would."""

    def __init__(self, cached: range) -> None:
        super().__init__()
        self.cached = cached
        self.resident_calls = 0

    def read_resident(self, digest: Digest, offset: int, length: int) -> bytes | None:
        self.resident_calls += 1
        if offset in self.cached and offset + length - 1 in self.cached:
            return DATA[offset : offset + length]
        return None


async def test_a_resident_range_is_answered_without_the_source_or_the_cache() -> None:
    source = Resident(range(0, 4096))
    cache = ChunkCache(ByLayer({LAYER: source}), chunk_size=1024)
    assert await cache.read(LAYER, 1000, 3000) == DATA[1000:4000]
    assert source.calls == [] and cache.misses == 0 and cache.resident == 1
    # Not resident: read in a thread, chunk by chunk, as before.
    assert await cache.read(LAYER, 4000, 200) == DATA[4000:4200]
    assert source.calls == [3072, 4096] and cache.resident == 1


async def test_readers_without_a_resident_path_are_read_in_threads_only() -> None:
    source = Slow()
    cache = ChunkCache(ByLayer({LAYER: source}), chunk_size=1024)
    assert await cache.read(LAYER, 0, 10) == DATA[:10]
    assert source.calls == [0] and cache.resident == 0


def test_local_tars_answer_resident_ranges_once_open(tmp_path: Path) -> None:
    tar = tmp_path / "layer.tar"
    tar.write_bytes(DATA)
    tars = LocalTars({LAYER: tar})
    # Not yet opened: opening may wait on the disk, so the thread path does it.
    assert tars.read_resident(LAYER, 0, 10) is None
    assert tars.read_range(LAYER, 0, 10) == DATA[:10]
    assert tars.read_resident(LAYER, 100, 5000) == DATA[100:5100]
    # Past the end: a short answer is left to read_range, which knows the end.
    assert tars.read_resident(LAYER, 10000, 500) is None
    assert tars.read_range(LAYER, 10000, 500) == DATA[10000:]


def test_layers_opened_now_answer_their_first_read_resident(tmp_path: Path) -> None:
    """``open_layers(now=True)``, as a mount does before it serves: no first read needs a thread."""
    tar = tmp_path / "layer.tar"
    tar.write_bytes(DATA)
    later = open_layers({LAYER: LayerData(tar)})
    assert isinstance(later, ByLayer)
    assert later.read_resident(LAYER, 100, 50) is None  # opened on its first read_range
    now = open_layers({LAYER: LayerData(tar)}, now=True)
    assert isinstance(now, ByLayer)
    assert now.read_resident(LAYER, 100, 50) == DATA[100:150]


def test_layers_opened_now_refuse_a_missing_file_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_layers({LAYER: LayerData(tmp_path / "gone.tar")}, now=True)


@pytest.mark.parametrize(
    ("error", "asked_again"),
    [(BlockingIOError(errno.EAGAIN, "not cached"), True), (OSError(errno.EOPNOTSUPP, "no"), False)],
)
def test_local_tars_leave_uncached_or_unsupported_ranges_to_read_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, asked_again: bool
) -> None:
    tar = tmp_path / "layer.tar"
    tar.write_bytes(DATA)
    tars = LocalTars({LAYER: tar})
    tars.read_range(LAYER, 0, 1)
    asked: list[int] = []

    def refusing(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        asked.append(offset)
        raise error

    monkeypatch.setattr(os, "preadv", refusing)
    assert tars.read_resident(LAYER, 0, 10) is None
    assert tars.read_resident(LAYER, 20, 10) is None
    # EAGAIN is one range's answer; no support is the file system's, so it is not asked again.
    assert asked == ([0, 20] if asked_again else [0])
    monkeypatch.undo()
    assert tars.read_range(LAYER, 20, 10) == DATA[20:30]
