"""Bytes a mount found wrong are read again through its own origin, never the cache's.

The cache's chunks and their fetches are every origin's: a hostile repository may name
an honest layer's digest and answer bytes of its own for it. The honest mount finds them
wrong and has them evicted; its read again (``CacheClient.read_again``) must get its own
repository's bytes, neither from the cache files nor from the hostile fetch that is out
for the same chunks by then."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import trio

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.client import CacheClient, RemoteBlob
from lazyfs.cache.daemon import Server, serve
from lazyfs.cache.pieces import MAX_PIECE, Pieces
from lazyfs.cache.values import BlobRange, Failure, FailureKind, HandleOrigin, Origin, Read
from lazyfs.index.estargz_index import fetch_toc
from providers.digest import Digest, digest_bytes
from providers.manifest import OCI_LAYER_GZIP, Layer
from providers.source import BlobSource
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource, fetcher
from tests.support.estargz_writer import File, write_estargz

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


def client(root: Path, origin: Origin, blob: Digest = BLOB, size: int = len(DATA)) -> CacheClient:
    return CacheClient(root, {blob: RemoteBlob(origin, size)}, chunk_size=SIZE)


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


class Bytes:
    """A repository answering ``data`` for any digest."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.data)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


async def test_a_toc_another_origin_landed_in_the_cache_is_read_again_through_ours(
    tmp_path: Path,
) -> None:
    blob = write_estargz([File("app/a", b"a" * 5000), File("app/b", b"b" * 300)])
    digest, size = digest_bytes(blob.data), len(blob.data)
    root = tmp_path / "cache"
    sources: dict[Origin, BlobSource] = {
        HOSTILE: Bytes(bytes(size)),  # its own bytes for the honest layer's digest
        HONEST: Bytes(blob.data),
    }
    async with daemon(root, sources):
        theirs, ours = client(root, HOSTILE, digest, size), client(root, HONEST, digest, size)
        await trio.to_thread.run_sync(theirs.read_range, digest, 0, size)
        layer = Layer(digest, OCI_LAYER_GZIP, size, digest)
        toc = await trio.to_thread.run_sync(fetch_toc, layer, ours, Digest(blob.toc_digest))
        assert [entry.name for entry in toc.entries if entry.name.startswith("app/")] == [
            "app/a",
            "app/b",
        ]


async def test_a_read_again_too_long_for_a_piece_is_refused_not_read_from_the_chunks(
    tmp_path: Path,
) -> None:
    honest = FakeSource()
    async with fetcher(tmp_path) as f, trio.open_nursery() as nursery:
        pieces = Pieces(nursery, trio.CapacityLimiter(4), trio.to_thread.run_sync)
        sources: dict[Origin, BlobSource] = {HONEST: honest}
        server = Server(f.cache, f, sources.__getitem__, None, None, pieces)
        asked = BlobRange(BLOB, 0, MAX_PIECE + 1)
        answer = await server.answer(Read(1, asked, HONEST, None, True, True, own=True))
        assert isinstance(answer, Failure) and answer.kind is FailureKind.BAD_REQUEST
        assert honest.calls == []
        nursery.cancel_scope.cancel()
