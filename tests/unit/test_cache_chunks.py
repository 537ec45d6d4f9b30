"""DiskCache: atomic chunks, a size limit with LRU eviction and pins, a restart that keeps all."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.layout import ChunkKey, Layout
from providers.digest import Digest
from providers.errors import UsageError

BLOB = Digest("sha256:" + "aa" * 32)
OTHER = Digest("sha256:" + "bb" * 32)
SIZE = 16


def block(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return os.statvfs(path).f_frsize


def chunk(index: int, byte: int = 0x41, length: int = SIZE) -> bytes:
    return bytes([byte + index % 50]) * length


def open_cache(root: Path, chunks: int) -> DiskCache:
    """A cache with room for ``chunks`` chunks of SIZE bytes (each takes one block)."""
    return DiskCache.open(root, chunks * block(root.parent), chunk_size=SIZE)


def key(index: int, digest: Digest = BLOB) -> ChunkKey:
    return ChunkKey(digest, index)


def test_put_writes_the_chunk_where_readers_look(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c", 4) as cache:
        path = cache.put(key(3), chunk(3))
        assert path == Layout(tmp_path / "c", SIZE).chunk_path(key(3))
        assert path.read_bytes() == chunk(3)
        assert cache.files.read_range(BLOB, 3 * SIZE + 2, 4) == chunk(3)[2:6]
        assert cache.contains(key(3)) and not cache.contains(key(2))
        assert cache.length(key(3)) == SIZE
        assert list((tmp_path / "c" / "tmp").iterdir()) == []


def test_the_cache_is_closed_to_other_users(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with open_cache(tmp_path / "c", 4) as cache:
            path = cache.put(key(0), chunk(0))
    finally:
        os.umask(old)
    root = tmp_path / "c"
    for directory in (
        root,
        root / "tmp",
        path.parent,
        path.parent.parent,
        path.parent.parent.parent,
    ):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_put_is_idempotent_and_keeps_the_first_copy(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c", 4) as cache:
        cache.put(key(0), chunk(0))
        inode = cache.layout.chunk_path(key(0)).stat().st_ino
        cache.put(key(0), chunk(0))
        assert cache.layout.chunk_path(key(0)).stat().st_ino == inode
        assert cache.stats().chunks == 1


@pytest.mark.parametrize("length", [0, SIZE + 1])
def test_put_refuses_what_cannot_be_a_chunk(tmp_path: Path, length: int) -> None:
    with open_cache(tmp_path / "c", 4) as cache, pytest.raises(ValueError):
        cache.put(key(0), b"x" * length)


def test_a_short_chunk_tells_the_blob_size(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c", 4) as cache:
        assert cache.blob_size(BLOB) is None
        cache.put(key(2), b"xyz")
        assert cache.blob_size(BLOB) == 2 * SIZE + 3
        assert cache.files.read_range(BLOB, 2 * SIZE, 100) == b"xyz"


def test_least_recently_used_chunks_go_first(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c", 3) as cache:
        for index in range(3):
            cache.put(key(index), chunk(index))
        cache.touch(key(0))
        cache.put(key(3), chunk(3))
        assert [cache.contains(key(i)) for i in range(4)] == [True, False, True, True]
        stats = cache.stats()
        assert stats.chunks == 3 and stats.used_bytes <= stats.limit_bytes
        assert not cache.layout.chunk_path(key(1)).exists()


def test_eviction_removes_the_blob_directory_with_its_last_chunk(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c", 1) as cache:
        cache.put(key(0, OTHER), chunk(0))
        cache.put(key(0), chunk(0))
        assert not cache.layout.blob_dir(OTHER).exists()


def test_a_chunk_read_by_a_mount_counts_as_used(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c", 2) as cache:
        cache.put(key(0), chunk(0))
        cache.put(key(1), chunk(1))
        # The daemon never saw this read: the mount read the file itself.
        os.utime(cache.layout.chunk_path(key(0)), (1e10, 1e10))
        cache.put(key(2), chunk(2))
        assert [cache.contains(key(i)) for i in range(3)] == [True, False, True]


def test_pinned_chunks_are_never_evicted(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c", 2) as cache:
        cache.put(key(0), chunk(0))
        cache.put(key(1), chunk(1))
        with cache.pinned([key(0), key(1)]):
            # Over the limit rather than failing the reader that needs chunk 2...
            cache.put(key(2), chunk(2))
            assert all(cache.contains(key(i)) for i in range(3))
            assert cache.stats().pinned_chunks == 2
            assert cache.stats().used_bytes > cache.stats().limit_bytes
        # ...and back under it once the pins are gone.
        stats = cache.stats()
        assert stats.used_bytes <= stats.limit_bytes and stats.pinned_chunks == 0
        assert cache.contains(key(2))


def test_pins_count(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c", 1) as cache:
        cache.put(key(0), chunk(0))
        cache.pin(key(0))
        cache.pin(key(0))
        cache.unpin(key(0))
        cache.put(key(1), chunk(1))
        assert cache.contains(key(0))
        cache.unpin(key(0))
        assert not cache.contains(key(0)) and cache.contains(key(1))


def test_a_chunk_a_mount_is_reading_is_not_evicted(tmp_path: Path) -> None:
    with open_cache(tmp_path / "c", 2) as cache:
        cache.put(key(0), chunk(0))
        cache.put(key(1), chunk(1))
        # What a reader in another process holds while it reads (layout.ChunkFiles).
        fd = os.open(cache.layout.chunk_path(key(0)), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            cache.put(key(2), chunk(2))
            assert cache.contains(key(0)) and not cache.contains(key(1))
        finally:
            os.close(fd)


def test_a_failed_write_leaves_no_chunk_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_cache(tmp_path / "c", 4) as cache:

        def broken_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(OSError):
            cache.put(key(0), chunk(0))
        monkeypatch.undo()
        assert not cache.contains(key(0))
        assert not cache.layout.chunk_path(key(0)).exists()
        assert list(cache.layout.tmp_dir.iterdir()) == []
        assert cache.stats().used_bytes == 0
        cache.put(key(0), chunk(0))
        assert cache.contains(key(0))


CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from lazyfs.cache.chunks import DiskCache
    from lazyfs.cache.layout import ChunkKey

    cache = DiskCache.open(Path(sys.argv[1]), 1 << 20, chunk_size=16)
    cache.put(ChunkKey("sha256:" + "aa" * 32, 0), b"A" * 16)
    real_write = os.write

    def write_half_then_die(fd, data):
        real_write(fd, bytes(data[:8]))
        os.kill(os.getpid(), signal.SIGKILL)

    os.write = write_half_then_die
    cache.put(ChunkKey("sha256:" + "aa" * 32, 1), b"B" * 16)
    """
)


def test_a_crash_mid_write_leaves_no_chunk_that_is_later_trusted(tmp_path: Path) -> None:
    root = tmp_path / "c"
    result = subprocess.run(
        [sys.executable, "-c", CRASH, str(root)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        check=False,
    )
    assert result.returncode == -9, result.stderr.decode()
    assert len(list((root / "tmp").iterdir())) == 1  # the half chunk, where it was written
    with open_cache(root, 4) as cache:
        assert cache.contains(key(0))
        assert not cache.contains(key(1))
        assert cache.files.read_range(BLOB, 0, 32) is None
        assert list(cache.layout.tmp_dir.iterdir()) == []


def test_a_restart_keeps_every_chunk_and_its_order(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with open_cache(root, 3) as cache:
        for index in range(3):
            cache.put(key(index), chunk(index))
        cache.put(key(0, OTHER), b"end")  # evicts chunk 0 of BLOB
        before = cache.stats()
        # Make the order on disk explicit: mtimes are what a restart has to go on.
        for age, k in enumerate([key(1), key(0, OTHER), key(2)]):
            os.utime(cache.layout.chunk_path(k), (1000 + age, 1000 + age))
    with open_cache(root, 3) as cache:
        assert cache.stats() == before
        assert cache.blob_size(OTHER) == 3
        cache.put(key(5), chunk(5))
        assert not cache.contains(key(1))  # the oldest mtime went first
        assert cache.contains(key(0, OTHER))
        assert cache.files.read_range(BLOB, 2 * SIZE, SIZE) == chunk(2)


def test_a_smaller_limit_at_restart_evicts_at_once(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with open_cache(root, 4) as cache:
        for index in range(4):
            cache.put(key(index), chunk(index))
            os.utime(cache.layout.chunk_path(key(index)), (1000 + index, 1000 + index))
    with open_cache(root, 2) as cache:
        assert [cache.contains(key(i)) for i in range(4)] == [False, False, True, True]
        assert len(list(cache.layout.blob_dir(BLOB).iterdir())) == 2


def test_start_up_drops_what_is_not_a_chunk(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with open_cache(root, 4) as cache:
        cache.put(key(0), chunk(0))
        layout = cache.layout
    blob_dir = layout.blob_dir(BLOB)
    junk = [
        blob_dir / "00000001",  # empty: put never writes one
        blob_dir / "00000002",  # longer than a chunk
        blob_dir / "notachunk",
        layout.chunks_dir / "sha256" / "zz",
        layout.chunks_dir / "stray",
        root / "chunks-32" / "sha256" / ("aa" * 32) / "00000000",  # another chunk size
        layout.tmp_dir / "chunk.half",
    ]
    for path in junk:
        path.parent.mkdir(parents=True, exist_ok=True)
    junk[0].write_bytes(b"")
    junk[1].write_bytes(b"x" * (SIZE + 1))
    for path in junk[2:]:
        path.write_bytes(b"x")
    (root / "daemon.sock").write_bytes(b"")  # not the cache's: left alone
    with open_cache(root, 4) as cache:
        assert cache.stats().chunks == 1
        assert cache.contains(key(0))
    assert not any(path.exists() for path in junk)
    assert not (root / "chunks-32").exists()
    assert (root / "daemon.sock").exists()


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with open_cache(root, 4), pytest.raises(UsageError, match="in use by another lazyfs daemon"):
        open_cache(root, 4)
    with open_cache(root, 4):
        pass


def test_a_limit_below_one_chunk_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="smaller than one chunk"):
        DiskCache.open(tmp_path / "c", SIZE - 1, chunk_size=SIZE)
