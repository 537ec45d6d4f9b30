"""ChunkCache: exact ranges, one read per missing chunk, a bounded cache."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from lazyfs.blobs.ranges import ChunkCache
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
