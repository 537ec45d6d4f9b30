"""Background fetch from an origin that fails: waits and goes on for now, stops for good.

In process, with trio, and a blob source over bytes in memory that fails
every request from one byte on while it is told to (the registry
client's own retries are behind that failure: what reaches the daemon is
its final word). The waits before trying again start short here
(``wait_first``); ``tests/registry/test_background_outage.py`` does the
same with a real registry stopped and started again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
import trio

from lazyfs.cache.background import Backgrounds
from lazyfs.cache.blobstate import COMPLETE, open_complete, read_verdict
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.values import BlobInfo, BlobKind
from providers.digest import Digest
from providers.errors import LazyfsError, NotFound, TemporaryFailure, Unauthorized, Unreached

SIZE = 64  # bytes a chunk
REQUEST = 8 * SIZE  # what one background request asks for
LIMIT = 1 << 30


def _layer() -> bytes:
    """A gzip layer blob of some twenty chunks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = os.urandom(1200)
        info = tarfile.TarInfo("file")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue())


LAYER = _layer()
DIGEST = Digest("sha256:" + hashlib.sha256(LAYER).hexdigest())


class Origin:
    """One blob by range; while ``failing``, every request from byte ``REQUEST`` on raises it."""

    def __init__(self, blob: bytes, failing: LazyfsError) -> None:
        self.blob = blob
        self.failing: LazyfsError | None = failing
        self.asked: list[int] = []  # the offset of every request
        self.lock = threading.Lock()

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.blob)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        with self.lock:
            self.asked.append(offset)
            failing = self.failing
        if failing is not None and offset >= REQUEST:
            raise failing
        return self.blob[offset : offset + length]

    def back(self) -> list[int]:
        """Answer from now on; the offsets asked so far."""
        with self.lock:
            self.failing = None
            return list(self.asked)


@asynccontextmanager
async def backgrounds(tmp_path: Path) -> AsyncIterator[tuple[DiskCache, Backgrounds]]:
    with DiskCache.open(tmp_path / "cache", LIMIT, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            fetcher = Fetcher(cache, nursery, readahead=(0, 0))
            yield cache, Backgrounds(fetcher, nursery, wait_first=0.01)
            nursery.cancel_scope.cancel()


async def _failed(backgrounds: Backgrounds) -> BlobInfo:
    """The blob's state once its first try has failed."""
    with trio.fail_after(60):  # a bound on a hang, not a timing
        while not (info := backgrounds.info(DIGEST)).reason:
            await trio.sleep(0.001)  # a poll: the job runs in threads
    return info


@pytest.mark.parametrize(
    "failure",
    [
        Unreached("cannot reach http://127.0.0.1:1: connection refused"),
        TemporaryFailure("registry answered 503 Service Unavailable", status=503),
        TemporaryFailure("no answer from http://127.0.0.1:1 within 30 s"),
    ],
    ids=["refused", "503", "timeout"],
)
async def test_a_fetch_its_origin_fails_for_now_waits_and_completes_by_itself(
    tmp_path: Path, failure: TemporaryFailure
) -> None:
    origin = Origin(LAYER, failure)
    async with backgrounds(tmp_path) as (cache, jobs):
        await jobs.start(origin, DIGEST, len(LAYER), None)
        info = await _failed(jobs)
        # Before: PARTIAL, until a mount asked again.
        assert info.kind is BlobKind.FETCHING, info
        assert "waiting for its origin" in info.reason and str(failure) in info.reason, info
        assert info.cached_bytes == REQUEST  # the chunks it had are kept
        before = origin.back()
        # No new mount asks: the job goes on by itself.
        with trio.fail_after(60):
            while (info := jobs.info(DIGEST)).kind is BlobKind.FETCHING:
                await trio.sleep(0.001)
        assert info.kind is BlobKind.COMPLETE, info
        verdict = read_verdict(cache.layout.root, DIGEST)
        assert verdict is not None and verdict.state == COMPLETE
        stream = open_complete(cache.layout.root, DIGEST, chunk_size=SIZE)
        assert stream is not None
        with stream:
            assert stream.read() == LAYER
        # Its first request's chunks were not asked for again.
        assert 0 not in origin.asked[len(before) :], origin.asked


@pytest.mark.parametrize(
    "failure",
    [
        NotFound("blob unknown to the registry", digest=DIGEST),
        Unauthorized("credentials refused", status=401),
    ],
    ids=["not-found", "unauthorized"],
)
async def test_a_fetch_its_origin_fails_for_good_stops_at_once(
    tmp_path: Path, failure: LazyfsError
) -> None:
    origin = Origin(LAYER, failure)
    async with backgrounds(tmp_path) as (_, jobs):
        await jobs.start(origin, DIGEST, len(LAYER), None)
        info = await _failed(jobs)
        assert info.kind is BlobKind.PARTIAL, info
        assert info.reason == str(failure)
        assert origin.asked == [0, REQUEST]  # once each: no try again
