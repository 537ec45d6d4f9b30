"""Pieces are their origin's: one repository's answer for a digest is never another's.

A hostile repository names an honest image's windows blob in its own index and
answers bytes of its own for it; the honest mount, reading through its own
repository, must get its own bytes, kept or in flight, never theirs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from lazyfs.cache.daemon import Server
from lazyfs.cache.pieces import Pieces
from lazyfs.cache.values import (
    BlobRange,
    HandleOrigin,
    Origin,
    Prefetch,
    PrefetchOk,
    Read,
    ReadOk,
)
from providers.digest import Digest
from providers.source import BlobSource
from tests.support.cache_fakes import BLOB, DATA, FakeSource, fetcher

HOSTILE, HONEST = HandleOrigin("hostile"), HandleOrigin("honest")


class Hostile(FakeSource):
    """A repository answering bytes of its own for BLOB, as long as asked."""

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        return wrong(super().read_range(digest, offset, length))


def wrong(data: bytes) -> bytes:
    return bytes(255 - b for b in data)


@asynccontextmanager
async def pieces() -> AsyncIterator[Pieces]:
    async with trio.open_nursery() as nursery:
        yield Pieces(nursery, trio.CapacityLimiter(4), trio.to_thread.run_sync)


async def test_a_piece_kept_through_another_origin_is_not_ours() -> None:
    hostile, honest = Hostile(), FakeSource()
    async with pieces() as p:
        assert await p.read(hostile, BLOB, 100, 20) == wrong(DATA[100:120])
        assert await p.read(honest, BLOB, 100, 20) == DATA[100:120]
        assert await p.read(honest, BLOB, 104, 8) == DATA[104:112]  # ours, kept
        assert await p.read(hostile, BLOB, 104, 8) == wrong(DATA[104:112])  # theirs, beside
        await p.read(hostile, BLOB, 200, 20)
        assert p.prefetch(honest, BLOB, 200, 20) == 1  # theirs kept is not ours coming
        assert await p.read(honest, BLOB, 200, 20) == DATA[200:220]
        assert await p.bring(honest, BLOB, 300, 20, trio.CapacityLimiter(1))
        assert p.evict(BLOB, 100, 1) == 2  # an Evict names no origin: both go
        assert await p.read(honest, BLOB, 100, 20) == DATA[100:120]
    assert honest.calls == [(100, 20), (200, 20), (300, 20), (100, 20)]
    assert hostile.calls == [(100, 20), (200, 20)]


async def test_a_read_never_joins_another_origins_flight() -> None:
    hostile, honest = Hostile(gated=True), FakeSource()
    theirs: list[bytes] = []
    async with pieces() as p:

        async def hostile_reader() -> None:
            theirs.append(await p.read(hostile, BLOB, 100, 20))

        async with trio.open_nursery() as readers:
            readers.start_soon(hostile_reader)
            await trio.testing.wait_all_tasks_blocked()
            try:
                with trio.fail_after(5):  # their flight never lands meanwhile
                    assert await p.read(honest, BLOB, 104, 8) == DATA[104:112]
                    # Evicted and read again, theirs still coming: ours again.
                    assert p.evict(BLOB, 100, 20) == 1
                    assert p.prefetch(honest, BLOB, 100, 20) == 1
                    assert await p.read(honest, BLOB, 100, 20) == DATA[100:120]
                    assert await p.bring(honest, BLOB, 100, 20, trio.CapacityLimiter(1))
                    assert p.in_flight == 1  # theirs
            finally:
                hostile.gate.set()
        assert await p.read(honest, BLOB, 100, 20) == DATA[100:120]  # theirs landed beside
    assert theirs == [wrong(DATA[100:120])]
    assert honest.calls == [(104, 8), (100, 20)]
    assert hostile.calls == [(100, 20)]


async def test_holds_looks_through_the_source_given() -> None:
    hostile, honest = Hostile(), FakeSource()
    async with pieces() as p:
        await p.read(hostile, BLOB, 0, 20)  # kept
        hostile.gate.clear()
        try:
            p.prefetch(hostile, BLOB, 100, 20)  # coming
            for offset in (0, 100):
                assert p.holds(BLOB, offset, 20, hostile)
                assert not p.holds(BLOB, offset, 20, honest)
        finally:
            hostile.gate.set()


async def test_the_daemon_answers_a_piece_through_the_readers_origin(tmp_path: Path) -> None:
    hostile, honest = Hostile(gated=True), FakeSource()
    sources: dict[Origin, BlobSource] = {HOSTILE: hostile, HONEST: honest}
    size = len(DATA)

    def piece(request_id: int, origin: Origin, offset: int = 100) -> Read:
        return Read(request_id, BlobRange(BLOB, offset, 20), origin, size, True, True)

    async with fetcher(tmp_path) as f, pieces() as p:
        server = Server(f.cache, f, sources.__getitem__, None, None, p)
        async with trio.open_nursery() as mounts:
            mounts.start_soon(server.answer, piece(1, HOSTILE))
            await trio.testing.wait_all_tasks_blocked()
            try:
                with trio.fail_after(5):  # theirs in flight
                    ahead = Prefetch(2, (BlobRange(BLOB, 100, 20),), HONEST, size, piece=True)
                    assert await server.answer(ahead) == PrefetchOk(2, 1)
                    assert await server.answer(piece(3, HONEST)) == ReadOk(3, (), DATA[100:120])
            finally:
                hostile.gate.set()
        assert await server.answer(piece(4, HOSTILE, 200)) == ReadOk(4, (), wrong(DATA[200:220]))
        assert await server.answer(piece(5, HONEST, 200)) == ReadOk(5, (), DATA[200:220])
    assert honest.calls == [(100, 20), (200, 20)]
    assert hostile.calls == [(100, 20), (200, 20)]
