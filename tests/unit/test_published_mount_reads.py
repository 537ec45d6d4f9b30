"""A mount reads a layer through its published index by the ranges it is asked for.

The mount's chunk cache (``lazyfs.blobs.ranges.ChunkCache``) cut every read
into aligned 128 KiB pieces of the tar stream.  Through a published index a
piece costs every checkpoint interval it touches, each a compressed span and
often a window fetched: a small file whose piece ran into the next interval
fetched that one too, for bytes nobody read.  ``PublishedLayers`` keeps what
it inflates itself, so the cache passes its reads through as they come
(``reads_exact``).
"""

from __future__ import annotations

import random
import threading

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from lazyfs.blobs.gzip_remote import open_published
from lazyfs.blobs.inflated import interval
from lazyfs.blobs.published_ahead import Need, interval_needs
from lazyfs.blobs.ranges import CHUNK_SIZE, ByLayer, ChunkCache
from lazyfs.index.model import IndexEntry
from providers.digest import Digest
from tests.support.blob_sources import Prefetching
from tests.support.images import Entry
from tests.support.published_artifacts import Built

HEADER = 512  # a tar header, which the reader holds a file to before its data


@pytest.fixture(scope="module")
def small_files(tmp_path_factory: pytest.TempPathFactory) -> Built:
    rng = random.Random(3)
    files = [Entry(f"f{n:03}", data=rng.randbytes(2000)) for n in range(300)]
    return Built(tmp_path_factory.mktemp("small"), True, files)


def _spans(bounds: list[int], lo: int, hi: int) -> set[int]:
    """The checkpoint intervals the tar stream's bytes ``[lo, hi)`` are in."""
    return set(range(interval(bounds, lo), interval(bounds, hi - 1) + 1))


def _a_file_beside_a_checkpoint(
    built: Built, entries: list[IndexEntry]
) -> tuple[IndexEntry, list[Need]]:
    """A file whose aligned piece runs into intervals that the file does not; the blob
    ranges (spans, windows) that only those need."""
    bounds = list(built.data.bounds)
    for entry in entries:
        if entry.size <= 0:
            continue
        piece = entry.offset - entry.offset % CHUNK_SIZE
        own = _spans(bounds, entry.offset - HEADER, entry.offset + entry.size)
        others = _spans(bounds, piece, min(piece + CHUNK_SIZE, bounds[-1])) - own
        needed = {need for n in own for need in _needs(built, n)}
        only = [need for n in others for need in _needs(built, n) if need not in needed]
        if only:
            return entry, only
    raise AssertionError("no file beside a checkpoint in the test layer")


def _needs(built: Built, number: int) -> list[Need]:
    return interval_needs(built.digest, built.data, number, window=True)


async def test_a_small_file_costs_only_the_intervals_it_is_in(small_files: Built) -> None:
    source = Prefetching(small_files.blobs)
    opened = open_published(small_files.layers_dir, small_files.layer, source)
    assert opened is not None
    index, reader, _ = opened
    entry, others = _a_file_beside_a_checkpoint(small_files, list(index.entries))
    cache = ChunkCache(ByLayer({small_files.digest: reader}))

    got = await cache.read(small_files.digest, entry.offset, entry.size)

    assert got == small_files.tar[entry.offset :][: entry.size]
    touched = [
        (kind, blob, offset)
        for kind, blob, offset, length in source.events
        for other, at, size in others
        if blob == other and offset < at + size and offset + length > at
    ]
    assert touched == []  # neither read nor asked for


class _Recorded:
    """A tar stream of zeros that records the ranges read, and says whether it reads exactly."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.reads: list[tuple[int, int]] = []

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return bytes(length)

    def reads_exact(self, digest: Digest) -> bool:
        return self.exact


@pytest.mark.parametrize("exact", [True, False])
async def test_the_chunk_cache_passes_an_exact_readers_ranges_through(exact: bool) -> None:
    digest = Digest("sha256:" + "5" * 64)
    source = _Recorded(exact)
    cache = ChunkCache(ByLayer({digest: source}))
    offset = 3 * CHUNK_SIZE - 100
    assert await cache.read(digest, offset, 300) == bytes(300)
    assert await cache.read(digest, offset + 50, 10) == bytes(10)
    if exact:
        assert source.reads == [(offset, 300), (offset + 50, 10)]  # each as asked, none kept
    else:
        assert source.reads == [(2 * CHUNK_SIZE, CHUNK_SIZE), (3 * CHUNK_SIZE, CHUNK_SIZE)]


class _Stalled(_Recorded):
    """An exact reader whose reads wait until ``release`` is set, as reads waiting on a span."""

    def __init__(self) -> None:
        super().__init__(True)
        self.release = threading.Event()

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.release.wait()
        return super().read_range(digest, offset, length)


async def test_exact_reads_waiting_hold_up_no_other_layers_chunks() -> None:
    stalled, other = Digest("sha256:" + "6" * 64), Digest("sha256:" + "7" * 64)
    waiting, local = _Stalled(), _Recorded(False)
    cache = ChunkCache(ByLayer({stalled: waiting, other: local}), threads=2)
    async with trio.open_nursery() as nursery:
        try:
            for n in range(4):  # more than the cache has threads
                nursery.start_soon(cache.read, stalled, n * 10, 10)
            await wait_all_tasks_blocked()
            with trio.fail_after(30):  # a hang, not a timing: it would never finish
                assert await cache.read(other, 0, 10) == bytes(10)
        finally:
            waiting.release.set()  # the stalled threads end: the nursery can close
