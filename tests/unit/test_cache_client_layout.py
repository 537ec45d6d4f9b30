"""A mount reads the chunk files where the cache daemon it talks to writes them.

In process: the daemon served with trio over a real socket, the cache's fake blob source.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.client import CacheClient, RemoteBlob
from lazyfs.cache.daemon import serve
from lazyfs.cache.layout import CHUNK_SIZE
from lazyfs.cache.values import HandleOrigin, Origin
from providers.source import BlobSource
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource


async def test_a_client_reads_the_chunks_of_a_daemon_of_another_chunk_size(
    tmp_path: Path,
) -> None:
    """As after an upgrade that changed the chunk size, with the old daemon still running."""
    assert SIZE != CHUNK_SIZE
    source = FakeSource()
    origin = HandleOrigin("blobs")

    def resolve(asked: Origin) -> BlobSource:
        assert asked == origin
        return source

    root = tmp_path / "cache"
    root.mkdir()
    with DiskCache.open(root, 256 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, cache, resolve)
            client = CacheClient(root, {BLOB: RemoteBlob(origin, len(DATA))})  # its own size
            try:
                got = await trio.to_thread.run_sync(client.read_range, BLOB, 40, 100)
                again = await trio.to_thread.run_sync(client.read_range, BLOB, 40, 100)
            finally:
                client.close()
                nursery.cancel_scope.cancel()
    assert got == again == DATA[40:140]
    assert client.files.layout.chunk_size == SIZE
