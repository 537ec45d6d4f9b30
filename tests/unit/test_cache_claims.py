"""What one image's origin does to a blob must not reach another's: its size claim, its failures.

A registry read stops at the size an image's manifest claims for a digest. An
image claiming less than the blob has leaves a short chunk, and a short chunk
is where a blob ends: every other mount of the digest read its end there, EIO
for every file past it. In process: the daemon's fetcher over a disk cache,
and the chunk files as a mount reads them.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import BinaryIO

import trio
import trio.testing

from lazyfs.cache.layout import ChunkKey
from providers.digest import Digest
from providers.errors import Unauthorized
from tests.support.cache_fetchers import fetcher_over

SIZE = 64  # bytes a chunk
BLOB = os.urandom(SIZE * 20)
DIGEST = Digest("sha256:" + "6b" * 32)
CLAIMED = 5 * SIZE + 10  # what the other image's manifest says: chunk 5 cut at 10 bytes


class Registry:
    """BLOB as a registry serves it to an image claiming ``size``: reads stop there."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls: list[tuple[int, int]] = []

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(BLOB[: self.size])

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return BLOB[offset : min(offset + length, self.size)]


async def test_a_smaller_claim_of_another_image_does_not_end_the_blob_past_it(
    tmp_path: Path,
) -> None:
    async with fetcher_over(tmp_path, SIZE) as fetcher:
        cache = fetcher.cache
        cut = Registry(CLAIMED)
        assert await fetcher.read(cut, DIGEST, 5 * SIZE, SIZE, CLAIMED) == BLOB[5 * SIZE :][:10]
        assert cache.length(ChunkKey(DIGEST, 5)) == 10  # the claim's end, kept
        # A mount of an image with the true size reads its chunk files first: past the
        # short chunk, it took the blob for ended (b"" for chunk 6 without asking).
        files = cache.files
        assert files.read_range(DIGEST, 6 * SIZE, 10) == b""  # no size known: as before
        assert files.read_range(DIGEST, 6 * SIZE, 10, len(BLOB)) is None  # a miss
        assert files.read_range(DIGEST, 5 * SIZE, SIZE, len(BLOB)) is None
        # It asks the daemon with its size: the chunks past the cut come its way.
        whole = Registry(len(BLOB))
        got = await fetcher.read(whole, DIGEST, 6 * SIZE, 2 * SIZE, len(BLOB))
        assert got == BLOB[6 * SIZE : 8 * SIZE] and whole.calls == [(6 * SIZE, 2 * SIZE)]
        # The cut chunk stays what it is (its mount's client says DigestMismatch): good
        # bytes are never dropped on a claim, which may be the wrong one.
        cut_chunk = await fetcher.read(whole, DIGEST, 5 * SIZE, SIZE, len(BLOB))
        assert cut_chunk == BLOB[5 * SIZE :][:10]


class Refusing:
    """A registry that refuses this image's credentials, once let go (``gate``)."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def open(self, digest: Digest) -> BinaryIO:
        raise Unauthorized("no")

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        assert self.gate.wait(timeout=30), "the gate was never opened"
        raise Unauthorized(f"{digest}: 401 from the registry of the other image")


async def test_a_read_waiting_on_another_origins_failed_fetch_fetches_through_its_own(
    tmp_path: Path,
) -> None:
    # One fetch per chunk, whoever waits: a mount whose registry answers 401 failed
    # the reads of another repository's mount of the same layer with its 401.
    async with fetcher_over(tmp_path, SIZE) as fetcher:
        refusing, whole = Refusing(), Registry(len(BLOB))
        errors: list[BaseException] = []
        got: list[bytes] = []

        async def read_refused() -> None:
            try:
                await fetcher.read(refusing, DIGEST, 0, SIZE, len(BLOB))
            except Unauthorized as error:
                errors.append(error)

        async def read_whole() -> None:
            got.append(await fetcher.read(whole, DIGEST, 0, SIZE, len(BLOB)))

        async with trio.open_nursery() as readers:
            readers.start_soon(read_refused)
            await trio.testing.wait_all_tasks_blocked()
            assert fetcher.in_flight(ChunkKey(DIGEST, 0)) and not whole.calls
            readers.start_soon(read_whole)
            await trio.testing.wait_all_tasks_blocked()
            assert not whole.calls  # it waits on the one fetch in flight
            refusing.gate.set()
        assert len(errors) == 1 and got == [BLOB[:SIZE]]
        assert whole.calls == [(0, SIZE)]
