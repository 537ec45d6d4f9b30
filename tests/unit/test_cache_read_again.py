"""Bytes a mount found wrong are read again through its own origin, never the cache's.

The cache's chunks and their fetches are every origin's: a hostile repository may name
an honest layer's digest and answer bytes of its own for it. The honest mount finds them
wrong and has them evicted; its read again (``CacheClient.read_again``) must get its own
repository's bytes, neither from the cache files nor from the hostile fetch that is out
for the same chunks by then."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.client import CacheClient, RemoteBlob
from lazyfs.cache.daemon import serve
from lazyfs.cache.values import HandleOrigin, Origin
from providers.digest import Digest
from providers.source import BlobSource
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource

HOSTILE, HONEST = HandleOrigin("hostile"), HandleOrigin("honest")


class Hostile(FakeSource):
    """A repository answering bytes of its own for BLOB; ``asked`` once it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.asked.set()  # the daemon's flight for the range is out by now
        return bytes(255 - b for b in super().read_range(digest, offset, length))


@asynccontextmanager
async def daemon(root: Path, sources: dict[Origin, BlobSource]) -> AsyncIterator[None]:
    root.mkdir()
    with DiskCache.open(root, 256 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, cache, sources.__getitem__)
            yield
            nursery.cancel_scope.cancel()


def client(root: Path, origin: Origin) -> CacheClient:
    return CacheClient(root, {BLOB: RemoteBlob(origin, len(DATA))}, chunk_size=SIZE)


async def test_a_read_again_is_through_our_origin_while_theirs_is_out(tmp_path: Path) -> None:
    hostile, honest = Hostile(), FakeSource()
    root = tmp_path / "cache"
    async with daemon(root, {HOSTILE: hostile, HONEST: honest}):
        theirs, ours = client(root, HOSTILE), client(root, HONEST)
        wrong = await trio.to_thread.run_sync(theirs.read_range, BLOB, 100, 40)
        # Their bytes are in the cache: our plain read is served them, from the files.
        assert await trio.to_thread.run_sync(ours.read_range, BLOB, 100, 40) == wrong
        assert honest.calls == []
        assert await trio.to_thread.run_sync(ours.evict, BLOB, 100, 40, "wrong") > 0
        hostile.gate.clear()  # their next fetch of the chunks is out, and stays out
        hostile.asked.clear()
        async with trio.open_nursery() as readers:
            readers.start_soon(trio.to_thread.run_sync, theirs.read_range, BLOB, 100, 40)
            assert await trio.to_thread.run_sync(hostile.asked.wait, 30)
            try:
                with trio.fail_after(10):  # their fetch never lands meanwhile
                    again = await trio.to_thread.run_sync(
                        ours.read_again, BLOB, 100, 40, abandon_on_cancel=True
                    )
                assert again == DATA[100:140]
            finally:
                hostile.gate.set()
        assert honest.calls == [(100, 40)]  # just the range, through ours
        # Read again through ours is kept as ours: asked again, not fetched again.
        assert await trio.to_thread.run_sync(ours.read_again, BLOB, 100, 40) == DATA[100:140]
        assert honest.calls == [(100, 40)]


async def test_a_read_again_is_cut_at_the_blobs_end(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    honest = FakeSource()
    async with daemon(root, {HONEST: honest}):
        ours = client(root, HONEST)
        got = await trio.to_thread.run_sync(ours.read_again, BLOB, 500, 40)
        assert got == DATA[500:]
        assert honest.calls == [(500, 12)]
