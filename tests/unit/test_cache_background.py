"""Background fetch in the daemon: low priority, whole-blob verdicts; eviction and prefetch runs.

In process, with trio and a blob source over bytes in memory that records
its calls and can hold them at a gate: what was asked upstream, and when,
is read from it; verdicts from the cache directory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
import trio
import trio.testing

from lazyfs.cache.background import Backgrounds
from lazyfs.cache.blobstate import (
    COMPLETE,
    open_complete,
    read_verdict,
    record_path,
    refusal,
)
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.layout import ChunkKey
from lazyfs.cache.values import BlobInfo, BlobKind, RegistryOrigin
from providers.digest import Digest

SIZE = 64  # bytes a chunk: a small blob has many


def _layer() -> tuple[bytes, Digest, Digest]:
    """A gzip layer blob, its digest and its diff_id."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = os.urandom(700)
        info = tarfile.TarInfo("file")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    plain = out.getvalue()
    blob = gzip.compress(plain)
    return (
        blob,
        Digest("sha256:" + hashlib.sha256(blob).hexdigest()),
        Digest("sha256:" + hashlib.sha256(plain).hexdigest()),
    )


BLOB, DIGEST, DIFF_ID = _layer()
CHUNKS = -(-len(BLOB) // SIZE)


class Source:
    """BLOB by range; records each call; gated, every call waits for ``gate``."""

    def __init__(self, *, gated: bool = False, blob: bytes = BLOB) -> None:
        self.blob = blob
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.asked = threading.Event()  # set once a call has arrived
        if not gated:
            self.gate.set()

    def open(self, digest: Digest) -> BinaryIO:
        return io.BytesIO(self.blob)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        with self.lock:
            self.calls.append((offset, length))
        self.asked.set()
        assert self.gate.wait(timeout=30), "the gate was never opened"
        return self.blob[offset : offset + length]


@asynccontextmanager
async def daemon(
    tmp_path: Path, limit_chunks: int = 4 * CHUNKS
) -> AsyncIterator[tuple[Fetcher, Backgrounds]]:
    """A cache whose limit holds ``limit_chunks`` chunks (each charged a whole block)."""
    root = tmp_path / "cache"
    root.mkdir(parents=True, exist_ok=True)
    limit = limit_chunks * os.statvfs(root).f_frsize
    with DiskCache.open(root, limit, chunk_size=SIZE) as cache:
        async with trio.open_nursery() as nursery:
            fetcher = Fetcher(cache, nursery, readahead=(0, 0))
            yield fetcher, Backgrounds(fetcher, nursery)


async def _judged(backgrounds: Backgrounds, digest: Digest = DIGEST) -> BlobInfo:
    """The blob's state once its background fetch is no longer FETCHING."""
    with trio.fail_after(60):  # a bound on a hang, not a timing
        while (info := backgrounds.info(digest)).kind is BlobKind.FETCHING:
            # A poll, not a delay: the job runs in threads, which a loop of bare
            # checkpoints starves of the interpreter (about 10 s a test).
            await trio.sleep(0.001)
    return info


async def _until(backgrounds: Backgrounds, kind: BlobKind, digest: Digest = DIGEST) -> None:
    assert (await _judged(backgrounds, digest)).kind is kind


async def test_background_fetch_waits_while_a_reader_waits_then_completes(tmp_path: Path) -> None:
    source = Source(gated=True)
    async with daemon(tmp_path) as (fetcher, backgrounds):
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await fetcher.read(source, DIGEST, 5 * SIZE, 10, len(BLOB)))

        async with trio.open_nursery() as readers:
            readers.start_soon(reader)
            await trio.to_thread.run_sync(source.asked.wait)
            state = await backgrounds.start(source, DIGEST, len(BLOB), DIFF_ID)
            assert state.kind is BlobKind.FETCHING
            await trio.testing.wait_all_tasks_blocked()
            # The reader's fetch is held upstream: the background started none.
            assert fetcher.fetches_in_flight == 1
            assert source.calls == [(5 * SIZE, SIZE)]
            source.gate.set()
        assert got == [BLOB[5 * SIZE : 5 * SIZE + 10]]
        await _until(backgrounds, BlobKind.COMPLETE)
        # Every chunk once: the reader's was not fetched again.
        assert len(source.calls) > 1
        assert sum(min(n, len(BLOB) - o) for o, n in source.calls) == len(BLOB), source.calls
    verdict = read_verdict(tmp_path / "cache", DIGEST)
    assert verdict is not None and verdict.state == COMPLETE and verdict.diff_id == DIFF_ID
    stream = open_complete(tmp_path / "cache", DIGEST, chunk_size=SIZE)
    assert stream is not None and stream.read() == BLOB


HONEST = RegistryOrigin("honest.example", "victim/app")
HOSTILE = RegistryOrigin("hostile.example", "bad/app")


async def test_an_image_naming_a_wrong_diff_id_cannot_quarantine_the_blob_for_others(
    tmp_path: Path,
) -> None:
    wrong = Digest("sha256:" + "0" * 64)
    root = tmp_path / "cache"
    async with daemon(tmp_path) as (fetcher, backgrounds):
        await backgrounds.start(Source(), DIGEST, len(BLOB), wrong, HOSTILE)
        await _until(backgrounds, BlobKind.COMPLETE)
        # The verdict is on the bytes: the diff_id they have, not the one claimed.
        verdict = read_verdict(root, DIGEST)
        assert verdict is not None and verdict.state == COMPLETE
        assert (verdict.size, verdict.diff_id) == (len(BLOB), DIFF_ID)
        assert fetcher.cache.blob_usage().get(DIGEST, 0) == len(BLOB)
    # An image that agrees reads, from any origin; the claimant is refused, with both named.
    assert refusal(root, DIGEST, HONEST, len(BLOB), DIFF_ID) == (None, True)
    reason, _ = refusal(root, DIGEST, HOSTILE, len(BLOB), wrong)
    assert reason == f"layer {DIGEST}: its diff_id is {DIFF_ID}, the image says {wrong}"
    stream = open_complete(root, DIGEST, chunk_size=SIZE)
    assert stream is not None and stream.read() == BLOB


async def test_a_blob_longer_claimed_is_complete_at_its_size_and_the_claim_refused(
    tmp_path: Path,
) -> None:
    async with daemon(tmp_path) as (_fetcher, backgrounds):
        await backgrounds.start(Source(), DIGEST, len(BLOB) + 5, DIFF_ID, HOSTILE)
        await _until(backgrounds, BlobKind.COMPLETE)
    reason, _ = refusal(tmp_path / "cache", DIGEST, HOSTILE, len(BLOB) + 5, DIFF_ID)
    assert reason == f"layer {DIGEST}: its size is {len(BLOB)}, the image says {len(BLOB) + 5}"
    assert refusal(tmp_path / "cache", DIGEST, HONEST, len(BLOB), DIFF_ID) == (None, True)


async def test_wrong_bytes_from_one_origin_are_held_against_that_origin_only(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    bad = bytearray(BLOB)
    bad[len(bad) // 2] ^= 0xFF
    async with daemon(tmp_path) as (fetcher, backgrounds):
        await backgrounds.start(Source(blob=bytes(bad)), DIGEST, len(BLOB), DIFF_ID, HOSTILE)
        await _until(backgrounds, BlobKind.QUARANTINED)
        assert fetcher.cache.blob_usage().get(DIGEST, 0) == 0
        assert read_verdict(root, DIGEST) is None
        reason, final = refusal(root, DIGEST, HOSTILE, len(BLOB), DIFF_ID)
        assert reason is not None and "hostile.example/bad/app served wrong bytes" in reason
        assert not final
        # Another origin's mount is not refused: it fetches from its own, and that verifies.
        assert refusal(root, DIGEST, HONEST, len(BLOB), DIFF_ID) == (None, False)
        honest = Source()
        assert (await backgrounds.start(honest, DIGEST, len(BLOB), DIFF_ID, HONEST)).kind is (
            BlobKind.FETCHING
        )
        await _until(backgrounds, BlobKind.COMPLETE)
        assert honest.calls
    # The bytes are known now: the origin's record of wrong ones is cleared.
    assert refusal(root, DIGEST, HOSTILE, len(BLOB), DIFF_ID) == (None, True)


async def test_bytes_that_hash_to_the_digest_but_do_not_unpack_are_refused_to_every_image(
    tmp_path: Path,
) -> None:
    # A gzip header, then a deflate block of the reserved type: no layer.
    junk = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 300
    digest = Digest("sha256:" + hashlib.sha256(junk).hexdigest())
    root = tmp_path / "cache"
    async with daemon(tmp_path) as (fetcher, backgrounds):
        await backgrounds.start(Source(blob=junk), digest, len(junk), DIFF_ID, HOSTILE)
        await _until(backgrounds, BlobKind.QUARANTINED, digest)
        assert fetcher.cache.blob_usage().get(digest, 0) == 0
    for origin in (HONEST, HOSTILE):
        reason, final = refusal(root, digest, origin, len(junk), None)
        assert reason is not None and "corrupt" in reason and final


@pytest.mark.parametrize("state", ["quarantined", "complete"])
async def test_a_verdict_in_the_earlier_format_is_ignored_and_the_blob_judged_again(
    tmp_path: Path, state: str
) -> None:
    root = tmp_path / "cache"
    path = record_path(root, DIGEST)
    path.parent.mkdir(parents=True)
    old = {"state": state, "size": len(BLOB), "diff_id": DIFF_ID, "reason": "diff_id: x"}
    path.write_text(json.dumps(old))
    assert read_verdict(root, DIGEST) is None
    assert refusal(root, DIGEST, HONEST, len(BLOB), DIFF_ID) == (None, False)
    async with daemon(tmp_path) as (_fetcher, backgrounds):
        assert (await backgrounds.start(Source(), DIGEST, len(BLOB), DIFF_ID, HONEST)).kind is (
            BlobKind.FETCHING
        )
        await _until(backgrounds, BlobKind.COMPLETE)
    assert refusal(root, DIGEST, HONEST, len(BLOB), DIFF_ID) == (None, True)


async def test_background_fetch_off_answers_and_fetches_nothing(tmp_path: Path) -> None:
    source = Source()
    async with daemon(tmp_path) as (_fetcher, backgrounds):
        backgrounds.enabled = False
        assert (
            await backgrounds.start(source, DIGEST, len(BLOB), DIFF_ID)
        ).kind is BlobKind.UNKNOWN
        await trio.testing.wait_all_tasks_blocked()
    assert source.calls == []


async def test_asking_twice_starts_one_background_fetch(tmp_path: Path) -> None:
    source = Source(gated=True)
    async with daemon(tmp_path) as (fetcher, backgrounds):
        await backgrounds.start(source, DIGEST, len(BLOB), DIFF_ID)
        await trio.to_thread.run_sync(source.asked.wait)
        await backgrounds.start(source, DIGEST, len(BLOB), DIFF_ID)
        await trio.testing.wait_all_tasks_blocked()
        assert fetcher.fetches_in_flight == 1
        source.gate.set()
        await _until(backgrounds, BlobKind.COMPLETE)
        calls = len(source.calls)
        # Done: a later mount's request finds the verdict and fetches nothing.
        assert (
            await backgrounds.start(source, DIGEST, len(BLOB), DIFF_ID)
        ).kind is BlobKind.COMPLETE
    assert len(source.calls) == calls


async def test_evict_drops_cached_chunks_and_the_next_read_fetches_them(tmp_path: Path) -> None:
    source = Source()
    async with daemon(tmp_path) as (fetcher, _backgrounds):
        assert await fetcher.read(source, DIGEST, 0, 3 * SIZE, len(BLOB)) == BLOB[: 3 * SIZE]
        assert fetcher.evict(DIGEST, SIZE + 1, 10) == 1
        assert not fetcher.cache.contains(ChunkKey(DIGEST, 1))
        assert fetcher.cache.contains(ChunkKey(DIGEST, 0))
        assert await fetcher.read(source, DIGEST, SIZE, SIZE, len(BLOB)) == BLOB[SIZE : 2 * SIZE]
    assert source.calls == [(0, 3 * SIZE), (SIZE, SIZE)]


@pytest.mark.parametrize(("most", "requests"), [(None, 2), (64, 1)])
async def test_a_prefetch_asks_in_requests_of_up_to_its_bound(
    tmp_path: Path, most: int | None, requests: int
) -> None:
    source = Source()
    async with daemon(tmp_path) as (fetcher, _backgrounds):
        # Ten chunks: reads ask for 8 at most; a landmark prefetch for all at once.
        queued = fetcher.prefetch(source, DIGEST, [(0, 10 * SIZE)], len(BLOB),
                                  max_request_chunks=most)  # fmt: skip
        assert queued == 10
    assert len(source.calls) == requests
    assert sorted(source.calls)[0][0] == 0  # the requests run side by side, in any order


async def test_a_complete_blob_that_lost_a_chunk_is_partial_and_fetched_again(
    tmp_path: Path,
) -> None:
    source = Source()
    async with daemon(tmp_path) as (fetcher, backgrounds):
        await backgrounds.start(source, DIGEST, len(BLOB), DIFF_ID)
        await _until(backgrounds, BlobKind.COMPLETE)
        fetcher.cache.drop(ChunkKey(DIGEST, 2))
        assert backgrounds.info(DIGEST).kind is BlobKind.PARTIAL
        calls = len(source.calls)
        assert (
            await backgrounds.start(source, DIGEST, len(BLOB), DIFF_ID)
        ).kind is BlobKind.FETCHING
        await _until(backgrounds, BlobKind.COMPLETE)
        assert source.calls[calls:] == [(2 * SIZE, SIZE)]


async def test_chunks_another_origin_filled_wrong_are_not_held_against_the_jobs_origin(
    tmp_path: Path,
) -> None:
    # A hostile image names the victim's layer digest with its own registry;
    # its mount reads a range first, so the cache holds its wrong bytes.
    root = tmp_path / "cache"
    bad = bytearray(BLOB)
    bad[3] ^= 0xFF
    async with daemon(tmp_path) as (fetcher, backgrounds):
        got = await fetcher.read(Source(blob=bytes(bad)), DIGEST, 0, 10, len(BLOB))
        assert got == bytes(bad[:10])
        honest = Source()
        await backgrounds.start(honest, DIGEST, len(BLOB), DIFF_ID, HONEST)
        info = await _judged(backgrounds)
        assert info.kind is BlobKind.COMPLETE, info.reason
        # The honest origin was asked for every chunk, the hostile one's included.
        assert sum(min(n, len(BLOB) - o) for o, n in honest.calls) >= len(BLOB)
        assert await fetcher.read(honest, DIGEST, 0, 10, len(BLOB)) == BLOB[:10]
    assert refusal(root, DIGEST, HONEST, len(BLOB), DIFF_ID) == (None, True)
    verdict = read_verdict(root, DIGEST)
    assert verdict is not None and verdict.state == COMPLETE and verdict.diff_id == DIFF_ID
    stream = open_complete(root, DIGEST, chunk_size=SIZE)
    assert stream is not None and stream.read() == BLOB


async def test_a_blob_larger_than_the_cache_is_left_to_reads_and_evicts_nothing(
    tmp_path: Path,
) -> None:
    # Fetched whole it would evict itself and every other blob, round after
    # round, and never be judged.
    other_blob = os.urandom(3 * SIZE)
    other = Digest("sha256:" + hashlib.sha256(other_blob).hexdigest())
    source = Source()
    async with daemon(tmp_path, limit_chunks=CHUNKS - 1) as (fetcher, backgrounds):
        await fetcher.read(Source(blob=other_blob), other, 0, 10, len(other_blob))
        info = await backgrounds.start(source, DIGEST, len(BLOB), DIFF_ID)
        assert info.kind is BlobKind.PARTIAL, info
        assert "larger than the cache" in info.reason
        await trio.testing.wait_all_tasks_blocked()
        assert source.calls == []
        assert fetcher.cache.contains(ChunkKey(other, 0))
        # Its reads are still served, on demand.
        assert await fetcher.read(source, DIGEST, SIZE, 10, len(BLOB)) == BLOB[SIZE : SIZE + 10]


async def test_a_blob_that_just_fits_the_cache_is_fetched_and_judged(tmp_path: Path) -> None:
    source = Source()
    async with daemon(tmp_path, limit_chunks=CHUNKS) as (_fetcher, backgrounds):
        await backgrounds.start(source, DIGEST, len(BLOB), DIFF_ID)
        await _until(backgrounds, BlobKind.COMPLETE)
