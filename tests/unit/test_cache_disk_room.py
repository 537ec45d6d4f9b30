"""The chunk cache on a full disk: it evicts to make room; background fetch waits for room.

The cache's size limit is far above the disk here, so only the disk's free
space can bound it. In process, with trio, a blob source over bytes in
memory and the cache directory on a small tmpfs of its own
(``tests.support.small_disks``: needs root, and fails without it), made
full by a file written until the disk refuses (no bytes left) or by
``no_room`` (no inodes left).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
import trio

from lazyfs.cache import chunks
from lazyfs.cache.background import Backgrounds
from lazyfs.cache.blobstate import COMPLETE, open_complete, read_verdict
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.layout import ChunkKey
from lazyfs.cache.values import BlobKind
from providers.digest import Digest
from tests.support.small_disks import no_room, small_disk

SIZE = 64  # bytes a chunk: each file takes a page of the tmpfs
LIMIT = 1 << 30  # far more than the disk holds


def _digest(blob: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(blob).hexdigest())


def _layer() -> bytes:
    """A gzip layer blob of some twenty chunks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = os.urandom(1200)
        info = tarfile.TarInfo("file")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue())


OLD = os.urandom(64 * SIZE)  # cached first, evictable
NEW = os.urandom(8 * SIZE)  # read once the disk is full
LAYER = _layer()


class Source:
    """One blob by range."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.calls = 0

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.blob)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.calls += 1
        return self.blob[offset : offset + length]


@asynccontextmanager
async def daemon(disk: Path) -> AsyncIterator[tuple[DiskCache, Fetcher, Backgrounds]]:
    with DiskCache.open(disk / "cache", LIMIT, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            fetcher = Fetcher(cache, nursery, readahead=(0, 0))
            yield cache, fetcher, Backgrounds(fetcher, nursery)


def _fill(path: Path) -> None:
    """Write ``path`` until its filesystem has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)


def _assert_whole(cache: DiskCache, blob: bytes) -> None:
    """Every chunk of ``blob`` the cache holds is its bytes, whole."""
    digest = _digest(blob)
    for index in range(-(-len(blob) // SIZE)):
        data = cache.files.read_chunk(ChunkKey(digest, index))
        assert data in (None, blob[index * SIZE : (index + 1) * SIZE]), index


async def _cache_old(fetcher: Fetcher, cache: DiskCache) -> None:
    assert await fetcher.read(Source(OLD), _digest(OLD), 0, len(OLD), len(OLD)) == OLD
    assert cache.blob_usage()[_digest(OLD)] == len(OLD)


async def test_a_read_on_a_disk_without_bytes_left_evicts_old_chunks_and_is_served(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "4m", inodes=None) as disk:
        async with daemon(disk) as (cache, fetcher, _):
            await _cache_old(fetcher, cache)
            _fill(disk / "filler")
            # Before: the chunk write failed with ENOSPC, and the read with it.
            got = await fetcher.read(Source(NEW), _digest(NEW), SIZE, 2 * SIZE, len(NEW))
            assert got == NEW[SIZE : 3 * SIZE]
            assert cache.blob_usage().get(_digest(OLD), 0) < len(OLD)
            # The oldest went first, and what is left of either blob is whole.
            assert not cache.contains(ChunkKey(_digest(OLD), 0))
            _assert_whole(cache, OLD)
            _assert_whole(cache, NEW)
            assert not os.listdir(cache.layout.tmp_dir)


async def test_a_read_on_a_disk_without_inodes_left_evicts_and_tries_again(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk", "4m", inodes=96) as disk:
        async with daemon(disk) as (cache, fetcher, _):
            await _cache_old(fetcher, cache)
            with no_room(disk, "full"):
                # Bytes to spare, so the look at the free space evicts nothing: the
                # write itself is refused (no inode for its file), evicts and goes again.
                got = await fetcher.read(Source(NEW), _digest(NEW), 0, SIZE, len(NEW))
            assert got == NEW[:SIZE]
            assert cache.blob_usage().get(_digest(OLD), 0) < len(OLD)
            _assert_whole(cache, OLD)
            _assert_whole(cache, NEW)


async def test_background_fetch_stopped_by_a_full_disk_completes_once_room_returns(
    tmp_path: Path,
) -> None:
    digest = _digest(LAYER)
    with small_disk(tmp_path / "disk", "4m", inodes=None) as disk:
        async with daemon(disk) as (cache, _, backgrounds):
            _fill(disk / "filler")  # and nothing cached to evict
            await backgrounds.start(Source(LAYER), digest, len(LAYER), None)
            with trio.fail_after(60):  # a bound on a hang, not a timing
                while not (info := backgrounds.info(digest)).reason:
                    await trio.sleep(0.001)  # a poll: the job runs in threads
            assert info.kind is BlobKind.FETCHING, info  # before: PARTIAL, for good
            assert "waiting for room" in info.reason
            (disk / "filler").unlink()
            # No new mount asks: the job goes on by itself.
            with trio.fail_after(60):
                while (info := backgrounds.info(digest)).kind is BlobKind.FETCHING:
                    await trio.sleep(0.001)
            assert info.kind is BlobKind.COMPLETE, info
            verdict = read_verdict(cache.layout.root, digest)
            assert verdict is not None and verdict.state == COMPLETE
            stream = open_complete(cache.layout.root, digest, chunk_size=SIZE)
            assert stream is not None
            with stream:
                assert stream.read() == LAYER


async def test_a_blob_the_disk_cannot_hold_is_not_fetched_round_after_round(
    tmp_path: Path,
) -> None:
    # Fetched anyway, each chunk written evicted every other image's chunks, then the
    # blob's own first ones: fetched whole four times over, the cache emptied, and
    # the blob left partial all the same.
    big = os.urandom(400 * SIZE)  # 400 pages of the tmpfs: more than the room left
    digest = _digest(big)
    with small_disk(tmp_path / "disk", "4m", inodes=None) as disk:
        async with daemon(disk) as (cache, fetcher, backgrounds):
            await _cache_old(fetcher, cache)
            vfs = os.statvfs(disk)
            (disk / "filler").write_bytes(bytes(vfs.f_bavail * vfs.f_frsize - (1 << 20)))
            source = Source(big)
            await backgrounds.start(source, digest, len(big), None)
            with trio.fail_after(60):  # a bound on a hang, not a timing
                while not (info := backgrounds.info(digest)).reason:
                    await trio.sleep(0.001)  # a poll: the job runs in threads
            assert info.kind is BlobKind.FETCHING and "has not the room" in info.reason, info
            assert source.calls == 0
            assert cache.blob_usage()[_digest(OLD)] == len(OLD)
            (disk / "filler").unlink()  # room: it goes on by itself, and is judged
            with trio.fail_after(60):
                while (info := backgrounds.info(digest)).kind is BlobKind.FETCHING:
                    await trio.sleep(0.001)
            assert info.kind is BlobKind.COMPLETE, info


def test_room_that_others_freed_meanwhile_is_not_freed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The free space is read before the mutex. Read short by a writer while another
    # evicted, it made this one evict as much again: looked at again under the mutex.
    with DiskCache.open(tmp_path / "cache", LIMIT, chunk_size=SIZE) as cache:
        for index in range(8):
            cache.put(ChunkKey(_digest(OLD), index), OLD[index * SIZE : (index + 1) * SIZE])
        looks = iter([0])  # the first look: nothing free; every later one: plenty
        monkeypatch.setattr(chunks, "free_bytes", lambda fd: next(looks, 1 << 40))
        cache.put(ChunkKey(_digest(NEW), 0), NEW[:SIZE])
        assert cache.blob_usage()[_digest(OLD)] == 8 * SIZE  # nothing of it evicted


def test_a_full_disk_looked_at_again_is_taken_at_its_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second look saying 0 bytes free was taken for no answer, and the first,
    # larger one used: a fuller disk made it evict less.
    with DiskCache.open(tmp_path / "cache", LIMIT, chunk_size=SIZE) as cache:
        for index in range(8):
            cache.put(ChunkKey(_digest(OLD), index), OLD[index * SIZE : (index + 1) * SIZE])
        plenty = cache.headroom + 64 * SIZE
        looks = iter([cache.headroom, 0])  # short by the chunk; then: nothing at all
        monkeypatch.setattr(chunks, "free_bytes", lambda fd: next(looks, plenty))
        cache.put(ChunkKey(_digest(NEW), 0), NEW[:SIZE])
        assert cache.blob_usage().get(_digest(OLD), 0) == 0  # all of it given back
