"""The cache daemon's server, in-process: requests over its Unix socket, answers by id."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from lazyfs.cache import cache_pb2 as pb
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.daemon import serve, socket_path
from lazyfs.cache.framing import encode_frame
from lazyfs.cache.messages import (
    BadRequest,
    BlobRange,
    Evict,
    EvictOk,
    Failure,
    FailureKind,
    HandleOrigin,
    Origin,
    Prefetch,
    PrefetchOk,
    Read,
    ReadOk,
    RegistryOrigin,
    Response,
    Status,
    StatusOk,
)
from lazyfs.cache.pieces import MAX_PIECE, MAX_PIECES_ASKED
from providers.digest import Digest
from providers.source import BlobSource
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource
from tests.support.cache_socket import connect

FAKE = HandleOrigin("fake")


@asynccontextmanager
async def daemon(tmp_path: Path, source: FakeSource) -> AsyncIterator[Path]:
    def resolve(origin: Origin) -> BlobSource:
        if origin == FAKE:
            return source
        raise BadRequest(f"unknown origin {origin}")

    root = tmp_path / "c"
    root.mkdir(exist_ok=True)
    with DiskCache.open(root, 64 * os.statvfs(root).f_frsize, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(serve, cache, resolve)
            yield path
            nursery.cancel_scope.cancel()


def read(request_id: int, offset: int, length: int, origin: Origin = FAKE) -> Read:
    return Read(request_id, BlobRange(BLOB, offset, length), origin)


async def test_a_read_is_answered_with_where_the_bytes_are(tmp_path: Path) -> None:
    source = FakeSource()
    async with daemon(tmp_path, source) as path, connect(path) as client:
        answer = await client.call(read(7, 10, 30))
        assert isinstance(answer, ReadOk) and answer.id == 7
        got = b""
        for extent in answer.extents:
            with open(extent.path, "rb") as chunk:
                chunk.seek(extent.file_offset)
                got += chunk.read(extent.length)
        assert got == DATA[10:40]
    assert source.calls == [(0, 48)]


async def test_the_socket_is_the_daemons_own(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    socket_path(root).write_bytes(b"")  # a stale one, from a killed daemon
    async with daemon(tmp_path, FakeSource()) as path:
        assert path == root / "daemon.sock"
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.exists()


async def test_mounts_on_two_connections_share_one_fetch(tmp_path: Path) -> None:
    source = FakeSource(gated=True)
    answers: list[Response | None] = []
    async with daemon(tmp_path, source) as path:

        async def mount(request_id: int) -> None:
            async with connect(path) as client:
                answers.append(await client.call(read(request_id, 0, 40)))

        async with trio.open_nursery() as mounts:
            mounts.start_soon(mount, 1)
            mounts.start_soon(mount, 2)
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
    assert sorted(a.id for a in answers if isinstance(a, ReadOk)) == [1, 2]
    assert source.calls == [(0, 48)]


async def test_answers_come_when_ready_named_by_id(tmp_path: Path) -> None:
    source = FakeSource(gated=True)
    async with daemon(tmp_path, source) as path, connect(path) as client:
        await client.send(read(1, 0, 16))  # waits for the gated source
        status = await client.call(Status(2))
        assert isinstance(status, StatusOk) and status.id == 2
        assert status.fetches_in_flight == 1 and status.chunk_size == SIZE
        assert (status.reads, status.waits) == (1, 1)  # a read that waits: a miss
        source.gate.set()
        answer = await client.receive()
        assert isinstance(answer, ReadOk) and answer.id == 1
        await client.call(read(3, 0, 16))  # cached now: no wait
        status = await client.call(Status(4))
        assert isinstance(status, StatusOk) and (status.reads, status.waits) == (2, 1)


async def test_failures_are_answers_and_the_connection_goes_on(tmp_path: Path) -> None:
    source = FakeSource()
    async with daemon(tmp_path, source) as path, connect(path) as client:
        elsewhere = RegistryOrigin("r.example", "x")
        unknown = await client.call(read(3, 0, 16, elsewhere))
        assert unknown == Failure(3, FailureKind.BAD_REQUEST, f"unknown origin {elsewhere}")
        missing = await client.call(Read(4, BlobRange(Digest("sha256:" + "00" * 32), 0, 16), FAKE))
        assert isinstance(missing, Failure) and missing.kind is FailureKind.NOT_FOUND
        # A request with an id but a bad digest: answered, not fatal.
        bad = pb.Request(id=5)
        bad.read.range.digest = "sha256:nothex"
        bad.read.origin.handle = "fake"
        await client.stream.send_all(encode_frame(bad.SerializeToString()))
        answer = await client.receive()
        assert isinstance(answer, Failure) and answer.id == 5
        assert answer.kind is FailureKind.BAD_REQUEST and "invalid blob digest" in answer.reason
        assert isinstance(await client.call(Status(6)), StatusOk)


@pytest.mark.parametrize(
    "wire",
    [
        b"\xff\xff\xff\xff",  # a frame far over the limit
        encode_frame(b"\xff"),  # a payload that is no request
    ],
)
async def test_a_stream_out_of_step_is_dropped(tmp_path: Path, wire: bytes) -> None:
    async with daemon(tmp_path, FakeSource()) as path:
        async with connect(path) as client:
            await client.stream.send_all(wire)
            assert await client.receive() is None
        # Only that connection: the daemon serves the next one.
        async with connect(path) as client:
            assert isinstance(await client.call(Status(1)), StatusOk)


async def test_prefetch_queues_what_is_missing(tmp_path: Path) -> None:
    source = FakeSource()
    async with daemon(tmp_path, source) as path, connect(path) as client:
        answer = await client.call(
            Prefetch(1, (BlobRange(BLOB, 0, 64), BlobRange(BLOB, 256, 16)), FAKE)
        )
        assert answer == PrefetchOk(1, 5)
        # The read waits on the prefetch's flights rather than fetching again.
        assert isinstance(await client.call(read(2, 0, 64)), ReadOk)
    assert sorted(source.calls) == [(0, 64), (256, 16)]


async def test_a_disconnected_mount_leaves_its_fetch_running_for_others(tmp_path: Path) -> None:
    source = FakeSource(gated=True)
    async with daemon(tmp_path, source) as path:
        async with connect(path) as client:
            await client.send(read(1, 0, 16))
            await trio.testing.wait_all_tasks_blocked()
        async with connect(path) as client:
            await client.send(read(2, 0, 16))
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
            answer = await client.receive()
            assert isinstance(answer, ReadOk) and answer.id == 2
    assert source.calls == [(0, 16)]


def piece(request_id: int, offset: int, length: int) -> Read:
    return Read(request_id, BlobRange(BLOB, offset, length), FAKE, len(DATA), True, True)


async def test_a_piece_is_fetched_alone_and_answered_in_the_reply(tmp_path: Path) -> None:
    source = FakeSource()
    async with daemon(tmp_path, source) as path, connect(path) as client:
        assert await client.call(piece(1, 10, 30)) == ReadOk(1, (), DATA[10:40])
        assert await client.call(piece(2, 20, 5)) == ReadOk(2, (), DATA[20:25])  # kept
        ahead = Prefetch(3, (BlobRange(BLOB, 100, 20),), FAKE, len(DATA), piece=True)
        assert await client.call(ahead) == PrefetchOk(3, 1)
        assert await client.call(piece(4, 100, 20)) == ReadOk(4, (), DATA[100:120])
        facts = await client.call(Status(5))
        assert isinstance(facts, StatusOk)
        assert (facts.fetches, facts.fetched_bytes, facts.chunks) == (2, 50, 0)
    assert source.calls == [(10, 30), (100, 20)]


async def test_a_piece_whose_chunks_are_cached_is_read_from_them(tmp_path: Path) -> None:
    # As after an earlier lazyfs's trace replay, which fetched windows as chunks.
    source = FakeSource()
    async with daemon(tmp_path, source) as path, connect(path) as client:
        assert isinstance(await client.call(read(1, 0, 48)), ReadOk)
        answer = await client.call(piece(2, 10, 30))
        assert isinstance(answer, ReadOk) and answer.data is None
        assert sum(e.length for e in answer.extents) == 30
    assert source.calls == [(0, 48)]


async def test_an_evicted_piece_is_fetched_again(tmp_path: Path) -> None:
    source = FakeSource()
    async with daemon(tmp_path, source) as path, connect(path) as client:
        await client.call(piece(1, 10, 30))
        assert await client.call(Evict(2, BlobRange(BLOB, 20, 1), "wrong bytes")) == EvictOk(2, 1)
        assert await client.call(piece(3, 10, 30)) == ReadOk(3, (), DATA[10:40])
    assert source.calls == [(10, 30), (10, 30)]


async def test_a_piece_too_long_or_in_too_many_is_fetched_as_chunks(tmp_path: Path) -> None:
    source = FakeSource()
    many = tuple(BlobRange(BLOB, 8 * n, 1) for n in range(MAX_PIECES_ASKED + 1))
    async with daemon(tmp_path, source) as path, connect(path) as client:
        long = Read(1, BlobRange(BLOB, 300, MAX_PIECE + 1), FAKE, len(DATA), True, True)
        answer = await client.call(long)
        assert isinstance(answer, ReadOk) and answer.data is None
        assert sorted(source.calls) == [(288, 128), (416, 96)]  # chunks 18-31, to the blob's end
        ahead = Prefetch(2, many, FAKE, len(DATA), piece=True)
        assert await client.call(ahead) == PrefetchOk(2, 18)  # chunks 0-17, not 65 pieces


async def test_a_piece_with_some_of_its_chunks_cached_is_a_piece(tmp_path: Path) -> None:
    source = FakeSource()
    async with daemon(tmp_path, source) as path, connect(path) as client:
        assert isinstance(await client.call(read(1, 0, 16)), ReadOk)  # chunk 0 only
        assert await client.call(piece(2, 10, 30)) == ReadOk(2, (), DATA[10:40])
    assert source.calls == [(0, 16), (10, 30)]
