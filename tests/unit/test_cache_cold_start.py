"""What keeps a lazy container's start off a busy link: exact reads, and background fetch that
waits for on-demand misses to settle.

In process, with trio (its mock clock where time matters) and the cache's fake blob source.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from lazyfs.cache.background import Backgrounds
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.client import CacheClient, RemoteBlob, remote_blob
from lazyfs.cache.daemon import serve
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.messages import decode_request, encode_request
from lazyfs.cache.values import BlobKind, BlobRange, HandleOrigin, Origin, Read, RegistryOrigin
from providers.digest import Digest
from providers.manifest import TOC_DIGEST_ANNOTATION, Layer
from providers.source import BlobSource
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource


@asynccontextmanager
async def fetcher(tmp_path: Path) -> AsyncIterator[tuple[Fetcher, trio.Nursery]]:
    root = tmp_path / "cache"
    root.mkdir(parents=True, exist_ok=True)
    with DiskCache.open(root, 64 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            yield Fetcher(cache, nursery, readahead=(2, 4)), nursery


async def judged(backgrounds: Backgrounds, clock: trio.testing.MockClock) -> None:
    """Wait until BLOB's background fetch is judged; fail, not hang, if it never is.

    Its fetches run in threads, so this polls, and the bound on a stuck
    fetch is in real time. The settle wait under test is over, and later
    time changes nothing but how soon the rest comes: from here the mock
    clock runs a thousand times faster than real time, and each poll waits
    a millisecond of it, in which the threads have the interpreter
    (spinning on checkpoints instead starved them, about 30 s a test).
    """
    clock.rate = 1000.0
    stuck = time.monotonic() + 60
    while backgrounds.info(BLOB).kind is BlobKind.FETCHING:
        assert time.monotonic() < stuck, "the background fetch was never judged"
        await trio.sleep(1.0)  # a poll: 1 ms of real time


async def test_exact_reads_fetch_only_what_they_ask_for(tmp_path: Path) -> None:
    source = FakeSource()
    async with fetcher(tmp_path) as (f, _):
        for offset in (0, 16, 32):
            await f.read_extents(source, BLOB, offset, 16, len(DATA), readahead=False)
    # Sequential as they are, no chunk past the last one asked for was fetched.
    assert sorted(source.calls) == [(0, 16), (16, 16), (32, 16)]


async def test_sequential_reads_that_are_not_exact_still_read_ahead(tmp_path: Path) -> None:
    source = FakeSource()
    async with fetcher(tmp_path) as (f, _):
        await f.read_extents(source, BLOB, 0, 16, len(DATA))
        await f.read_extents(source, BLOB, 16, 16, len(DATA))
    assert sorted(source.calls) == [(0, 16), (16, 16), (32, 32)]


async def test_background_fetch_waits_until_no_miss_came_for_its_settle_time(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    source = FakeSource()
    async with fetcher(tmp_path) as (f, nursery):
        backgrounds = Backgrounds(f, nursery, settle=5.0)
        await f.read(source, BLOB, 0, 16, len(DATA))
        await backgrounds.start(source, BLOB, len(DATA), None)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(4.0)
        await trio.testing.wait_all_tasks_blocked()
        # The reader's miss, nothing more yet (a fetch starts in trio, before its thread asks).
        assert f.fetches_started == 1 and source.calls == [(0, 16)]
        # Another miss restarts the wait.
        await f.read(source, BLOB, 100, 1, len(DATA))
        mock_clock.jump(4.0)
        await trio.testing.wait_all_tasks_blocked()
        assert f.fetches_started == 2 and len(source.calls) == 2
        mock_clock.jump(1.5)
        # Settled: the rest of the blob comes, and it is judged.
        await judged(backgrounds, mock_clock)
        assert len(source.calls) > 2


async def test_a_background_request_itself_holds_the_link_for_the_reads_that_follow(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    source = FakeSource()
    async with fetcher(tmp_path) as (f, nursery):
        backgrounds = Backgrounds(f, nursery, settle=5.0)
        await backgrounds.start(source, BLOB, len(DATA), None)  # no read has come yet
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(4.5)
        await trio.testing.wait_all_tasks_blocked()
        # None started (a fetch starts in trio, before its thread asks the source).
        assert f.fetches_started == 0 and source.calls == []
        mock_clock.jump(1.0)
        await judged(backgrounds, mock_clock)
        assert source.calls


def test_a_read_says_whether_it_is_exact_on_the_wire() -> None:
    origin = RegistryOrigin("registry.example", "repo")
    for exact in (False, True):
        read = Read(7, BlobRange(BLOB, 3, 4), origin, 100, exact)
        assert decode_request(encode_request(read)) == read


def test_an_estargz_layer_is_read_exactly_and_another_is_not() -> None:
    plain = Layer(BLOB, "application/vnd.oci.image.layer.v1.tar+gzip", 100)
    stargz = Layer(
        BLOB, plain.media_type, 100, annotations=((TOC_DIGEST_ANNOTATION, "sha256:" + "ab" * 32),)
    )
    assert not remote_blob("registry.example", "repo", plain).exact
    assert remote_blob("registry.example", "repo", stargz).exact


class Blobs(FakeSource):
    """DATA under every digest, each call recorded with its digest."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[Digest, int, int]] = []

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        with self.lock:
            self.asked.append((digest, offset, length))
        return DATA[offset : offset + length]


async def test_the_first_toc_read_of_a_mount_fetches_every_estargz_layers_tail(
    tmp_path: Path,
) -> None:
    source = Blobs()
    origin = HandleOrigin("blobs")

    def resolve(asked: Origin) -> BlobSource:
        assert asked == origin
        return source

    first, second, plain = (Digest("sha256:" + c * 64) for c in "123")
    blobs = {
        first: RemoteBlob(origin, len(DATA), exact=True),
        second: RemoteBlob(origin, len(DATA), exact=True),
        plain: RemoteBlob(origin, len(DATA)),  # not eStargz: no TOC to read
    }
    root = tmp_path / "c"
    root.mkdir()
    with DiskCache.open(root, 256 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, cache, resolve)
            client = CacheClient(root, blobs, chunk_size=SIZE)
            tail = await trio.to_thread.run_sync(client.read_range, first, len(DATA) - 40, 40)
            assert tail == DATA[-40:]
            # A bound on a hang, not a timing: without the prefetch it never comes.
            with trio.fail_after(30):
                while not any(digest == second for digest, _, _ in source.asked):
                    await trio.sleep(0.01)  # the prefetch runs in the daemon's tasks
            client.close()
            nursery.cancel_scope.cancel()
    # The other eStargz layer's last 40 bytes were asked for too, nothing of the plain one.
    assert {d for d, _, _ in source.asked} == {first, second}
    assert all(offset + length >= len(DATA) - 40 for _, offset, length in source.asked)
