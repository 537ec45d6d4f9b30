"""A registry's Retry-After, and one origin's many blobs, in the background fetch's waits.

The registry client's last TemporaryFailure carries the server's
``Retry-After`` (``retry_after``), against a loopback server that counts
requests. The cache daemon's background fetch then waits at least that
long before asking the origin again, and the blobs queued from one origin
that is down ask it once a round between them, not once each. In process,
with trio's autojumping mock clock: each request's time is the clock's,
read when the request begins and when it fails, and nothing else in these
tests sets a timer, so a wait is measured exactly, never slept.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import io
import os
import tarfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trio
import trio.testing

from lazyfs.cache.background import Backgrounds
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.layout import ChunkKey
from lazyfs.cache.origin_wait import RETRY_AFTER_MOST
from lazyfs.cache.room import ROOM_TRIES, room_wait
from lazyfs.cache.values import WAITING, BlobKind, Origin, RegistryOrigin
from providers.digest import Digest
from providers.errors import TemporaryFailure
from providers.registry_http import HttpOptions, RegistryHttp
from tests.support.httpserver import serve

SIZE = 64  # bytes a chunk
REQUEST = 8 * SIZE  # what one background request asks for
LIMIT = 1 << 30
FIRST = 1.0  # seconds before the first try again: the daemon's default
EXACT = 1e-6  # the mock clock's float arithmetic, not a timing allowance


# -- the registry client --------------------------------------------------------


class Busy:
    """A registry that answers every request 429 (or ``status``) with ``retry_after``;
    ``token``: it asks for a bearer token, and its token server is what answers so."""

    def __init__(self, retry_after: str | None, status: int = 429, token: bool = False) -> None:
        self.retry_after = retry_after
        self.status = status
        self.token = token
        self.requests = 0
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        busy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if busy.token and self.path.startswith("/v2/"):
                    realm = f"http://{self.headers['Host']}/token"
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", f'Bearer realm="{realm}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with busy.lock:
                    busy.requests += 1
                body = b'{"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}'
                self.send_response(busy.status)
                if busy.retry_after is not None:
                    self.send_header("Retry-After", busy.retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _failure(busy: Busy) -> TemporaryFailure:
    with serve(busy.handler()) as base:
        http = RegistryHttp(HttpOptions(attempts=1))  # its own retries: none here
        with pytest.raises(TemporaryFailure) as raised:
            http.get(f"{base}/v2/lazy/blobs/sha256:{'ab' * 32}", image="x", scope=None)
    assert busy.requests == 1
    return raised.value


@pytest.mark.parametrize(
    ("header", "status", "carried"),
    [
        ("120", 429, 120.0),
        ("30", 503, 30.0),
        ("86400", 429, 86400.0),  # a day: as it says (the background bounds its wait)
        ("soon", 429, None),  # unreadable: ignored
        ("0", 503, None),
        (None, 503, None),
    ],
    ids=["seconds", "503", "a day", "malformed", "zero", "none"],
)
def test_the_client_s_temporary_failure_carries_the_server_s_retry_after(
    header: str | None, status: int, carried: float | None
) -> None:
    failure = _failure(Busy(header, status))
    assert failure.status == status
    assert failure.retry_after == carried


def test_a_token_server_s_retry_after_is_carried_too() -> None:
    failure = _failure(Busy("90", 429, token=True))
    assert "token server" in str(failure) and failure.retry_after == 90.0


def test_a_retry_after_date_is_carried_as_the_seconds_until_it() -> None:
    when = email.utils.formatdate(time.time() + 300, usegmt=True)
    failure = _failure(Busy(when))
    # Whole seconds in the header, read a moment after it was written.
    assert failure.retry_after is not None and 200 < failure.retry_after <= 300


# -- the background fetch -------------------------------------------------------


def _layer(seed: int) -> bytes:
    """A gzip layer blob of some twenty chunks."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = os.urandom(1200)
        info = tarfile.TarInfo(f"file{seed}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue())


LAYERS = [_layer(i) for i in range(5)]
DIGESTS = [Digest("sha256:" + hashlib.sha256(b).hexdigest()) for b in LAYERS]


class Down:
    """Blobs by range, from one origin that fails its next ``failing`` requests from byte
    ``start`` on with ``failure``. ``requests``: each one's (failed, begun, ended), clock
    times, in the order they came."""

    def __init__(
        self, clock: trio.testing.MockClock, failure: TemporaryFailure, failing: int, start: int
    ) -> None:
        self.clock = clock
        self.failure = failure
        self.failing = failing
        self.start = start
        self.blobs = dict(zip(DIGESTS, LAYERS, strict=True))
        self.requests: list[tuple[bool, float, float]] = []
        self.back = threading.Event()  # answered a request it would have failed before
        self.lock = threading.Lock()

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.blobs[digest])

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        with self.lock:
            begun = self.clock.current_time()
            fails = offset >= self.start and self.failing > 0
            self.failing -= fails
            self.requests.append((fails, begun, self.clock.current_time()))
            if offset >= self.start and not fails:
                self.back.set()
        if fails:
            raise self.failure
        return self.blobs[digest][offset : offset + length]

    def gaps(self) -> list[float]:
        """From each failed request's end to the start of the request after it."""
        asked = self.requests
        return [asked[i + 1][1] - asked[i][2] for i in range(len(asked) - 1) if asked[i][0]]


class Repository:
    """Another repository of ``down``'s registry: a source of its own, the same server."""

    def __init__(self, down: Down) -> None:
        self.down = down

    def open(self, digest: Digest) -> BinaryIO:
        return self.down.open(digest)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        return self.down.read_range(digest, offset, length)


@asynccontextmanager
async def backgrounds(tmp_path: Path) -> AsyncIterator[Backgrounds]:
    with DiskCache.open(tmp_path / "cache", LIMIT, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            fetcher = Fetcher(cache, nursery, readahead=(0, 0))
            yield Backgrounds(fetcher, nursery, wait_first=FIRST)
            nursery.cancel_scope.cancel()


async def _back(source: Down) -> None:
    """Until the origin answered again. Waited in a thread, on no timer: meanwhile the
    mock clock jumps only to the background's own wake-ups."""
    assert await trio.to_thread.run_sync(source.back.wait, 60), "the origin was never asked again"


async def _judged(jobs: Backgrounds, digests: list[Digest], kind: BlobKind) -> None:
    stuck = time.monotonic() + 60  # a bound on a hang, in real time: not a timing
    while any(jobs.info(d).kind is BlobKind.FETCHING for d in digests):
        assert time.monotonic() < stuck, [jobs.info(d) for d in digests]
        # A poll, in a thread: the mock clock jumps only to the background's own
        # wake-ups meanwhile (a trio.sleep here would jump it, and spin, while the
        # jobs' requests run in their threads).
        await trio.to_thread.run_sync(time.sleep, 0.01)
    for digest in digests:
        assert jobs.info(digest).kind is kind, jobs.info(digest)


async def test_a_429_s_retry_after_is_waited_out_before_the_origin_is_asked_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    busy = TemporaryFailure("registry failed: HTTP 429 slow down", status=429, retry_after=60.0)
    source = Down(autojump_clock, busy, failing=3, start=REQUEST)
    async with backgrounds(tmp_path) as jobs:
        await jobs.start(source, DIGESTS[0], len(LAYERS[0]), None, origin=None)
        await _back(source)
        # The requests until it answered again (the blob's next ones may have followed).
        assert [r[0] for r in source.requests[:5]] == [False, True, True, True, False]
        # Before: asked again after 1, 2 and 4 s, however long the registry asked for.
        assert all(gap >= 60.0 - EXACT for gap in source.gaps()), source.requests
        await _judged(jobs, DIGESTS[:1], BlobKind.COMPLETE)


async def test_a_retry_after_of_a_day_is_waited_out_ten_minutes_at_most(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    busy = TemporaryFailure("registry failed: HTTP 429", status=429, retry_after=86400.0)
    source = Down(autojump_clock, busy, failing=1, start=REQUEST)
    async with backgrounds(tmp_path) as jobs:
        await jobs.start(source, DIGESTS[0], len(LAYERS[0]), None, origin=None)
        await _back(source)
        # The clock jumps only to the background's wake-ups: the gap is its wait, exactly.
        assert source.gaps() == [pytest.approx(RETRY_AFTER_MOST)], source.requests
        await _judged(jobs, DIGESTS[:1], BlobKind.COMPLETE)


async def test_blobs_of_one_origin_that_is_down_ask_it_once_a_round_between_them(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    down = TemporaryFailure("registry failed: HTTP 503", status=503)
    source = Down(autojump_clock, down, failing=4, start=0)
    origin: Origin = RegistryOrigin("registry.test", "lazy/a")
    async with backgrounds(tmp_path) as jobs:
        for digest, layer in zip(DIGESTS[:4], LAYERS[:4], strict=True):
            await jobs.start(source, digest, len(layer), None, origin)
        # Another repository of the same host (its own source, as the daemon has one a
        # repository): the same origin, down with the rest.
        repository = Repository(source)
        await jobs.start(
            repository, DIGESTS[4], len(LAYERS[4]), None, RegistryOrigin("registry.test", "b")
        )
        await _back(source)
        # Until it answered again (the blobs' next requests may have followed).
        assert [r[0] for r in source.requests[:5]] == [True] * 4 + [False], source.requests
        # One request a round, on the schedule one blob alone keeps: 1, 2, 4 s between
        # them. Before: each blob queued asked the failing registry itself, at once.
        wanted = [room_wait(tries, FIRST) for tries in range(4)]
        gaps = source.gaps()
        assert all(g >= w - EXACT for g, w in zip(gaps, wanted, strict=True)), source.requests
        # Once it answers, they all go on.
        await _judged(jobs, DIGESTS, BlobKind.COMPLETE)


async def test_a_blob_of_another_origin_is_not_held_up_by_one_that_is_down(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # The clock stands still: a blob held until the down origin's next try stays held.
    down = TemporaryFailure("registry failed: HTTP 503", status=503)
    source = Down(mock_clock, down, failing=1 << 30, start=0)
    other = Down(mock_clock, down, failing=0, start=0)
    async with backgrounds(tmp_path) as jobs:
        await jobs.start(source, DIGESTS[0], len(LAYERS[0]), None, RegistryOrigin("down.test", "a"))
        await jobs.start(other, DIGESTS[1], len(LAYERS[1]), None, RegistryOrigin("up.test", "a"))
        stuck = time.monotonic() + 60  # a bound on a hang, in real time: not a timing
        while jobs.info(DIGESTS[1]).kind is BlobKind.FETCHING:
            assert time.monotonic() < stuck, "held up by another origin"
            await trio.to_thread.run_sync(time.sleep, 0.01)  # a poll: the job runs in threads
        assert jobs.info(DIGESTS[1]).kind is BlobKind.COMPLETE, jobs.info(DIGESTS[1])
        # Its own origin down, the first blob waits for it, having asked it once.
        info = jobs.info(DIGESTS[0])
        assert info.kind is BlobKind.FETCHING and info.reason.startswith(WAITING), info
        assert [r[0] for r in source.requests] == [True]


class Flaky(Down):
    """An origin near its rate limit: every other request fails for now, for good."""

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        with self.lock:
            fails = len(self.requests) % 2 == 1
            now = self.clock.current_time()
            self.requests.append((fails, now, now))
        if fails:
            raise self.failure
        return self.blobs[digest][offset : offset + length]


async def test_an_origin_that_answers_between_failures_wears_out_no_blob(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Blobs of some 20 requests each: every fetch of one fails partway, its bytes until
    # then kept. A failure counts as a try only while the origin has answered nothing
    # since, so none of the blobs gives up. Before: every blob counted every failure of
    # the origin since it was queued, the other blobs' included, and most gave up.
    busy = TemporaryFailure("registry failed: HTTP 429", status=429)
    source = Flaky(autojump_clock, busy, failing=0, start=0)
    source.blobs = {}
    for _ in range(3):
        blob = os.urandom(20 * REQUEST)  # stored, not inflated: any bytes do
        source.blobs[Digest("sha256:" + hashlib.sha256(blob).hexdigest())] = blob
    origin: Origin = RegistryOrigin("registry.test", "lazy")
    async with backgrounds(tmp_path) as jobs:
        for digest, blob in source.blobs.items():
            await jobs.start(source, digest, len(blob), None, origin)
        await _judged(jobs, list(source.blobs), BlobKind.COMPLETE)
    # More failures than one blob may meet in a row: what the old count wore out.
    assert sum(failed for failed, _, _ in source.requests) > 2 * 20


class Scripted(Down):
    """Each request answered or failed (for now) as ``answers`` says, in turn; answered
    once they run out. Each try of the blob answers one request, at least."""

    def __init__(self, clock: trio.testing.MockClock, answers: list[bool]) -> None:
        super().__init__(clock, TemporaryFailure("registry failed: HTTP 503", status=503), 0, 0)
        self.answers = answers
        self.blob = os.urandom(4 * REQUEST)  # stored, not inflated: any bytes do
        self.digest = Digest("sha256:" + hashlib.sha256(self.blob).hexdigest())
        self.blobs = {self.digest: self.blob}

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        with self.lock:
            fails = not self.answers.pop(0) if self.answers else False
            now = self.clock.current_time()
            self.requests.append((fails, now, now))
        if fails:
            raise self.failure
        return self.blob[offset : offset + length]


async def test_bytes_on_the_last_try_begin_a_new_row_of_tries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Its origin down for all but the last of the blob's tries; that try's first request
    # answered (the origin is back), its second failed: the first failure of a new row,
    # not the last of the old one. Before: the blob gave up there, partial.
    source = Scripted(autojump_clock, [False] * ROOM_TRIES + [True, False])
    async with backgrounds(tmp_path) as jobs:
        await jobs.start(source, source.digest, len(source.blob), None, RegistryOrigin("r", "a"))
        await _judged(jobs, [source.digest], BlobKind.COMPLETE)


async def test_a_blob_whose_bytes_are_evicted_between_tries_still_ends(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # Each try gets one request's bytes, then a failure; while it waits, other reads
    # evict what it got. No try gets further than the one before: they are failures in a
    # row, and it gives up after ROOM_TRIES. Before: any bytes a try got counted as the
    # origin answering, and it tried again every second for good. The clock stands still
    # but when the test moves it on, past the wait, once the chunks are evicted.
    source = Scripted(mock_clock, [True, False] * 1000)
    async with backgrounds(tmp_path) as jobs:
        await jobs.start(source, source.digest, len(source.blob), None, RegistryOrigin("r", "a"))
        stuck = time.monotonic() + 60  # a bound on a hang, in real time: not a timing
        while (info := jobs.info(source.digest)).kind is BlobKind.FETCHING:
            failed = sum(f for f, _, _ in source.requests)
            assert failed <= 4 * ROOM_TRIES, f"{failed} failures, and trying again"
            assert time.monotonic() < stuck, info
            if info.reason.startswith(WAITING):
                for index in range(len(source.blob) // SIZE):
                    jobs.cache.drop(ChunkKey(source.digest, index))
                mock_clock.jump(120)  # past the longest wait of the schedule
            await trio.to_thread.run_sync(time.sleep, 0.01)  # a poll, as in _judged
        assert info.kind is BlobKind.PARTIAL, info
        assert sum(f for f, _, _ in source.requests) == ROOM_TRIES + 1
