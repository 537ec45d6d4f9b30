"""Letting go of removed layers' chunks (``lazyfs.cache.forget``): through a daemon, in-process,
and on the directory itself when none answers; a background fetch of one stops."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from lazyfs.cache import service
from lazyfs.cache.background import Backgrounds
from lazyfs.cache.blobstate import COMPLETE, QUARANTINED, Verdict, read_verdict, write_verdict
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.daemon import Resolve, Server, serve
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.forget import Forgotten, forget
from lazyfs.cache.forget_serve import listed
from lazyfs.cache.forget_values import Forget
from lazyfs.cache.layout import ChunkKey
from lazyfs.cache.messages import (
    BadRequest,
    BlobKind,
    BlobRange,
    HandleOrigin,
    Origin,
    Read,
    ReadOk,
)
from lazyfs.cache.spawn import START_LOCK
from providers.digest import Digest
from providers.errors import NotFound
from providers.source import BlobSource
from tests.support.cache_fakes import BLOB, DATA, SIZE, FakeSource
from tests.support.cache_socket import connect
from tests.support.lazyfs_cli import REPO

FAKE = HandleOrigin("fake")
OTHER = Digest("sha256:" + "ab" * 32)
CHUNKS = len(DATA) // SIZE


def _resolver(source: BlobSource) -> Resolve:
    def resolve(origin: Origin) -> BlobSource:
        if origin == FAKE:
            return source
        raise BadRequest(f"unknown origin {origin}")

    return resolve


def _open(root: Path) -> DiskCache:
    root.mkdir(exist_ok=True)
    return DiskCache.open(root, 4 * CHUNKS * os.statvfs(root).f_frsize, chunk_size=SIZE)


@asynccontextmanager
async def _daemon(tmp_path: Path) -> AsyncIterator[tuple[DiskCache, Path]]:
    with _open(tmp_path / "c") as cache:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(serve, cache, _resolver(FakeSource()))
            yield cache, path
            nursery.cancel_scope.cancel()


def _on_disk(root: Path, digest: Digest) -> list[int]:
    """The chunk indices of ``digest`` in the cache directory."""
    blob = root / f"chunks-{SIZE}" / "sha256" / digest.split(":")[1]
    return sorted(int(name, 16) for name in os.listdir(blob)) if blob.is_dir() else []


def _blocks(root: Path, digest: Digest, indices: list[int]) -> int:
    blob = root / f"chunks-{SIZE}" / "sha256" / digest.split(":")[1]
    return sum((blob / f"{i:08x}").stat().st_blocks * 512 for i in indices)


@contextlib.contextmanager
def _read_by_a_mount(root: Path, digest: Digest, index: int) -> Iterator[None]:
    """Hold chunk ``index`` as a mount's read does: a shared flock on its file."""
    blob = root / f"chunks-{SIZE}" / "sha256" / digest.split(":")[1]
    fd = os.open(blob / f"{index:08x}", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


async def test_a_daemon_lets_go_of_a_removed_blob_but_for_chunks_pinned_or_being_read(
    tmp_path: Path,
) -> None:
    async with _daemon(tmp_path) as (cache, path), connect(path) as client:
        assert isinstance(await client.call(Read(1, BlobRange(BLOB, 0, len(DATA)), FAKE)), ReadOk)
        root = cache.layout.root
        cache.put(ChunkKey(OTHER, 0), b"x" * SIZE)
        write_verdict(root, Verdict(BLOB, COMPLETE, len(DATA)))
        assert _on_disk(root, BLOB) == list(range(CHUNKS))
        gone = [i for i in range(CHUNKS) if i not in (3, 5)]
        expected = _blocks(root, BLOB, gone)
        with cache.pinned([ChunkKey(BLOB, 5)]), _read_by_a_mount(root, BLOB, 3):
            forgotten = await trio.to_thread.run_sync(forget, root, [BLOB])
        assert (forgotten.chunks, forgotten.freed, forgotten.left) == (len(gone), expected, None)
        assert _on_disk(root, BLOB) == [3, 5]
        assert _on_disk(root, OTHER) == [0]  # not named: kept
        assert cache.stats().chunks == 3
        assert read_verdict(root, BLOB) is None  # it would say the blob is here
        # Until a request names it again, none of it is cached: a fetch of it stops.
        with pytest.raises(NotFound, match="removed"):
            cache.put(ChunkKey(BLOB, 7), DATA[7 * SIZE : 8 * SIZE])
        assert isinstance(await client.call(Read(2, BlobRange(BLOB, 7 * SIZE, 4), FAKE)), ReadOk)
        assert 7 in _on_disk(root, BLOB)


async def test_a_background_fetch_of_a_blob_let_go_stops_and_brings_nothing_back(
    tmp_path: Path,
) -> None:
    source = FakeSource(gated=True)
    with _open(tmp_path / "c") as cache:
        async with trio.open_nursery() as nursery:
            fetcher = Fetcher(cache, nursery, readahead=(0, 0))
            backgrounds = Backgrounds(fetcher, nursery)
            server = Server(cache, fetcher, _resolver(source), backgrounds)
            await backgrounds.start(source, BLOB, len(DATA), None, FAKE)
            with trio.fail_after(30):  # a bound on a hang, not a timing
                while not source.calls:
                    await trio.sleep(0.001)  # its first request is out, held upstream
            await server.forget(Forget(1, (BLOB,)))
            source.gate.set()
            # Until the run has done all it will (its chunk refused, it stops).
            with trio.fail_after(30):  # a bound on a hang, not a timing
                while any(task.name.endswith("_run") for task in nursery.child_tasks):
                    await trio.sleep(0.001)
            # Its job is gone with its layer: no state of it outlives the chunks.
            assert backgrounds.info(BLOB).kind is BlobKind.UNKNOWN
            assert len(source.calls) == 1  # it asked for no more of it
            assert _on_disk(cache.layout.root, BLOB) == []
            assert read_verdict(cache.layout.root, BLOB) is None
            # The status lists it no more: nothing of it is here.
            assert BLOB not in [info.digest for info in listed(cache, backgrounds)]
            nursery.cancel_scope.cancel()


def _filled(root: Path) -> None:
    """A cache directory with every chunk of BLOB and one of OTHER, and no daemon."""
    with _open(root) as cache:
        for index in range(CHUNKS):
            cache.put(ChunkKey(BLOB, index), DATA[index * SIZE : (index + 1) * SIZE])
        cache.put(ChunkKey(OTHER, 0), b"x" * SIZE)


def test_with_no_daemon_the_chunks_go_from_the_directory_but_one_being_read(
    tmp_path: Path,
) -> None:
    root = tmp_path / "c"
    _filled(root)
    write_verdict(root, Verdict(BLOB, COMPLETE, len(DATA)))
    write_verdict(root, Verdict(OTHER, QUARANTINED, 3, None, "no tar"))
    gone = [i for i in range(CHUNKS) if i != 2]
    expected = _blocks(root, BLOB, gone) + _blocks(root, OTHER, [0])
    with _read_by_a_mount(root, BLOB, 2):
        forgotten = forget(root, [BLOB, OTHER])
    assert (forgotten.chunks, forgotten.freed, forgotten.left) == (len(gone) + 1, expected, None)
    assert _on_disk(root, BLOB) == [2]
    assert _on_disk(root, OTHER) == []
    assert read_verdict(root, BLOB) is None
    assert read_verdict(root, OTHER) is not None  # a quarantine stays: a fact, of no size
    # A daemon opening the directory next takes stock of what is left.
    with _open(root) as cache:
        assert cache.stats().chunks == 1


@pytest.mark.parametrize("lock", [START_LOCK, "lock"])
def test_with_a_daemon_starting_the_chunks_are_left_for_it(tmp_path: Path, lock: str) -> None:
    root = tmp_path / "c"
    _filled(root)
    fd = os.open(root / lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a start under way: the starter's, or the daemon's
        forgotten = forget(root, [BLOB])
    finally:
        os.close(fd)
    assert forgotten.chunks == forgotten.freed == 0
    assert forgotten.left is not None and "daemon" in forgotten.left
    assert _on_disk(root, BLOB) == list(range(CHUNKS))


async def test_a_daemons_gc_chore_lets_go_of_the_blobs_it_removed(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _filled(root)

    told: list[bool] = []

    def image_gc(forget: service.Forgets) -> None:
        forget([BLOB])  # as a pass does while it holds the store
        told.append(not _on_disk(root, BLOB))  # gone before the pass would let go of it

    with _open(root) as cache:
        async with trio.open_nursery() as nursery:
            chore = (0.01, image_gc, service.ChoreRunning())
            nursery.start_soon(service._serve, cache, _resolver(FakeSource()), False, chore, None)
            with trio.fail_after(30):  # a bound on a hang, not a timing
                while not told:
                    await trio.sleep(0.01)
            assert told[0] and not _on_disk(root, BLOB)
            assert _on_disk(root, OTHER) == [0]
            nursery.cancel_scope.cancel()


def test_what_is_not_a_chunk_is_left_and_the_rest_counted(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _filled(root)
    blob_dir = root / f"chunks-{SIZE}" / "sha256" / BLOB.split(":")[1]
    os.symlink("/nonexistent", blob_dir / "stray")  # a link, not a chunk's file
    expected = _blocks(root, BLOB, list(range(CHUNKS))) + _blocks(root, OTHER, [0])
    forgotten = forget(root, [BLOB, OTHER])
    # Every chunk of both went and was counted; the link stayed, said in one reason.
    assert (forgotten.chunks, forgotten.freed) == (CHUNKS + 1, expected)
    assert forgotten.left is not None and str(blob_dir / "stray") in forgotten.left
    assert (
        os.listdir(blob_dir) == ["stray"]
        and not (root / f"chunks-{SIZE}" / "sha256" / OTHER.split(":")[1]).exists()
    )


def test_a_cache_dir_this_user_cannot_reach_is_a_reason_not_an_error(tmp_path: Path) -> None:
    # As nobody, root's private directory on the way: pathlib raises EACCES.
    private = tmp_path / "private"
    (private / "cache").mkdir(parents=True)
    private.chmod(0o700)
    tmp_path.chmod(0o755)
    code = (
        "import sys; from pathlib import Path; from lazyfs.cache.forget import forget;"
        "print(forget(Path(sys.argv[1]), ['sha256:' + 'cd' * 32]).left)"
    )
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", code, str(private / "cache")],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Permission denied" in done.stdout


def test_a_fifo_among_the_chunks_is_not_waited_on(tmp_path: Path) -> None:
    # Opening a FIFO to read waits for a writer: a forget would hold the store meanwhile.
    root = tmp_path / "c"
    _filled(root)
    blob_dir = root / f"chunks-{SIZE}" / "sha256" / BLOB.split(":")[1]
    os.mkfifo(blob_dir / "fifo")
    got: list[Forgotten] = []
    forgetting = threading.Thread(target=lambda: got.append(forget(root, [BLOB])), daemon=True)
    forgetting.start()
    forgetting.join(timeout=60)  # a bound on a hang, not a timing
    assert got and got[0].chunks == CHUNKS
    assert os.listdir(blob_dir) == ["fifo"]
