"""A registry that answers 429 with Retry-After: the background fetch waits it out, asking
once a round for all the blobs queued from it.

A real registry (``docker-registry``) on loopback holds three gzip layers
of one repository; a fault proxy in front of it (``tests.support.fault_proxy``)
answers its next three blob requests 429 with ``Retry-After: 60`` and
records every request. The cache daemon's background fetch (in process,
with trio's autojumping mock clock) reads the three blobs through the real
registry client (``lazyfs.cache.upstream.Origins``, no retries of its own
so that one fetch is one request). Each request's clock time is read as
it begins and as it fails; while the test waits for the registry to
answer again it sets no timer, so the clock jumps only to the background's
own wake-ups, and a wait is measured exactly, never slept.

Before: the three blobs asked the registry one after another at once, and
each asked again after 1 s, 2 s, 4 s, however long it asked for.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import trio
import trio.testing

from lazyfs.cache.background import Backgrounds
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.upstream import Origins, RegistryBlobs
from lazyfs.cache.values import BlobKind, RegistryOrigin
from providers.digest import Digest
from providers.errors import TemporaryFailure
from providers.registry import RegistryOptions
from providers.registry_http import HttpOptions
from tests.support.fault_proxy import Faults, run_proxy
from tests.support.registry_servers import put_blob, run_registry

BUSY = 3  # requests answered 429
RETRY_AFTER = 60.0
EXACT = 1e-6  # the mock clock's float arithmetic, not a timing allowance


def _layer(name: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = os.urandom(300 << 10)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue())


class Timed:
    """The repository's blob source, each request's clock times kept: (failed, begun, ended)."""

    def __init__(self, inner: RegistryBlobs, clock: trio.testing.MockClock) -> None:
        self.inner = inner
        self.clock = clock
        self.requests: list[tuple[bool, float, float]] = []
        self.back = threading.Event()  # a request answered after one failed
        self.lock = threading.Lock()

    def open(self, digest: Digest) -> BinaryIO:
        return self.inner.open(digest)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        begun = self.clock.current_time()
        try:
            data = self.inner.read_range(digest, offset, length)
        except TemporaryFailure:
            with self.lock:
                self.requests.append((True, begun, self.clock.current_time()))
            raise
        with self.lock:
            self.requests.append((False, begun, self.clock.current_time()))
            if any(failed for failed, _, _ in self.requests):
                self.back.set()
        return data


async def test_a_registry_s_429_retry_after_is_waited_out_once_for_all_its_blobs(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    layers = [_layer(f"file{i}") for i in range(3)]
    with run_registry(tmp_path / "registry", tmp_path / "storage") as registry:
        digests = [Digest(put_blob(registry.url, "lazy/wait", layer)) for layer in layers]
        faults = Faults(target="/blobs/", statuses=[429] * BUSY, retry_after=f"{RETRY_AFTER:g}")
        with run_proxy(registry.url, faults) as proxy:
            # No retries in the client: each background request is one HTTP request.
            options = RegistryOptions(registry=proxy, http=HttpOptions(attempts=1))
            origin = RegistryOrigin(urlsplit(proxy).netloc, "lazy/wait")
            blobs = Origins(options)(origin)
            assert isinstance(blobs, RegistryBlobs)
            source = Timed(blobs, autojump_clock)
            root = tmp_path / "cache"
            with DiskCache.open(root, 1 << 30) as cache:
                async with trio.open_nursery() as nursery:
                    jobs = Backgrounds(Fetcher(cache, nursery, readahead=(0, 0)), nursery)
                    for digest, layer in zip(digests, layers, strict=True):
                        blobs.note_size(digest, len(layer))  # as the daemon does
                        await jobs.start(source, digest, len(layer), None, origin)
                    # Waited in a thread, on no timer (see the module's doc).
                    came = await trio.to_thread.run_sync(source.back.wait, 120)
                    assert came, "the registry was never asked again"
                    asked = list(source.requests)
                    stuck = time.monotonic() + 120  # a bound on a hang, not a timing
                    while any(jobs.info(d).kind is BlobKind.FETCHING for d in digests):
                        assert time.monotonic() < stuck, [jobs.info(d) for d in digests]
                        # A poll, in a thread: the mock clock jumps only to the
                        # background's wake-ups meanwhile, not with each poll.
                        await trio.to_thread.run_sync(time.sleep, 0.01)
                    nursery.cancel_scope.cancel()
            assert [jobs.info(d).kind for d in digests] == [BlobKind.COMPLETE] * 3
    # The proxy answered 429 as often as it was told to, and the blob requests it saw
    # are the background's, one each: the failures all came first, then an answer.
    assert faults.statuses == []
    # Until it answered again (the blobs' next requests may have followed the snapshot).
    assert [failed for failed, _, _ in asked[: BUSY + 1]] == [True] * BUSY + [False], asked
    blob_requests = [path for path, _ in faults.seen if "/blobs/" in path]
    assert len(blob_requests) == len(source.requests), blob_requests
    # One request a round for the three blobs, each after the Retry-After at least.
    gaps = [asked[i + 1][1] - asked[i][2] for i in range(BUSY)]
    assert all(gap >= RETRY_AFTER - EXACT for gap in gaps), asked
