"""The daemon's side of the cache directory: atomic chunk writes, a size limit, LRU eviction, pins.

``DiskCache.open`` takes the directory for this process (one daemon per
directory: an exclusive flock on ``lock``), clears ``tmp/``, drops what is not
a valid chunk, and rebuilds its accounting from the files that are, oldest
mtime first: a restarted daemon trusts and keeps what it had. The layout is
``lazyfs.cache.layout``'s.

The limit counts whole filesystem blocks of chunk files, what ``du`` shows.
Before a chunk is written, least recently used chunks are evicted to make room
for it; a chunk is never evicted while it is pinned: by this process
(``pin``/``pinned``, for the time between a fetch landing and its readers
being served) or by a reader in another process (a shared flock, see
``layout``). Recency is this process's own use plus the mtime that mount
processes set when they read a chunk directly: an evictee whose mtime moved
since the daemon last looked gets a second chance. When every chunk is pinned
the cache goes over the limit rather than fail a read, and evicts down to it
as soon as pins are released.

A blob whose layers were removed is let go at once, its chunks refused until a
request names it again (``release``, ``want``: ``lazyfs.cache.release``).

The filesystem's free space bounds it too (``lazyfs.cache.room``): before a
chunk is written, chunks are evicted in the same order to keep a headroom
free there, and a write refused for want of room evicts more and is tried
once again before it fails.

Thread-safe: the daemon writes chunks from worker threads. Blocking (fsync):
call it from trio through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from lazyfs.cache.chunk_write import write_tmp
from lazyfs.cache.layout import CHUNK_SIZE, ChunkFiles, ChunkKey, Layout
from lazyfs.cache.release import Releasing
from lazyfs.cache.room import free_bytes, headroom, no_room
from lazyfs.cache.stock import make_dirs, take_stock
from providers.digest import Digest
from providers.errors import UsageError
from providers.private_dir import private_dir

T = TypeVar("T")


@dataclass
class _Entry:
    length: int
    charged: int  # length rounded up to whole blocks
    used_at: float  # the file's mtime when this process last looked at or used it


@dataclass(frozen=True)
class CacheStats:
    used_bytes: int
    limit_bytes: int
    chunks: int
    pinned_chunks: int
    chunk_size: int


class DiskCache(Releasing):
    """The chunk cache under one directory, owned by this process until ``close``.

    Made by ``open``; a context manager that closes it.
    """

    def __init__(
        self, layout: Layout, limit_bytes: int, lock_fd: int, block: int, headroom: int
    ) -> None:
        super().__init__()
        self.layout = layout
        self.limit_bytes = limit_bytes
        self.headroom = headroom  # bytes kept free on the filesystem, chunks evicted for it
        self.files = ChunkFiles(layout)
        self._lock_fd: int | None = lock_fd
        self._block = block
        self._mutex = threading.Lock()
        self._lru: OrderedDict[ChunkKey, _Entry] = OrderedDict()  # oldest first
        self._pins: Counter[ChunkKey] = Counter()
        self._used = 0
        self._reserved = 0  # charged for chunks being written, not renamed in yet
        self._ends: dict[Digest, int] = {}  # blob sizes that a short chunk shows

    @classmethod
    def open(cls, root: Path, limit_bytes: int, *, chunk_size: int = CHUNK_SIZE) -> DiskCache:
        """Own the cache at ``root`` (made private if missing) with a limit of ``limit_bytes``.

        Raises UsageError when another process owns it or the limit is below
        one chunk. Evicts down to the limit at once when the files found
        exceed it (a smaller ``--cache_size`` than last time).
        """
        if limit_bytes < chunk_size:
            raise UsageError(f"cache size {limit_bytes} is smaller than one chunk ({chunk_size})")
        layout = Layout(root, chunk_size)
        private_dir(root)
        fd = os.open(layout.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(
                    f"the cache at {root} is in use by another lazyfs daemon"
                ) from None
            block = os.fstatvfs(fd).f_frsize or 4096
            cache = cls(layout, limit_bytes, fd, block, headroom(fd))
            cache._rebuild()
        except BaseException:
            os.close(fd)
            raise
        return cache

    def close(self) -> None:
        """Let go of the directory (another daemon may own it next). Idempotent."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> DiskCache:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Lookups

    def contains(self, key: ChunkKey) -> bool:
        with self._mutex:
            return key in self._lru

    def length(self, key: ChunkKey) -> int | None:
        """The length of chunk ``key`` when cached (short only as its blob's last chunk)."""
        with self._mutex:
            entry = self._lru.get(key)
            return None if entry is None else entry.length

    def blob_size(self, digest: Digest) -> int | None:
        """The blob's size when its last chunk is cached and short, else None (not known here)."""
        with self._mutex:
            return self._ends.get(digest)

    def holds_whole(self, size: int) -> bool:
        """Whether a blob of ``size`` bytes fits under the limit, its chunks charged as
        ``du`` counts them, with nothing else cached."""
        return self._charge_whole(size) <= self.limit_bytes

    def no_disk_room_for(self, size: int) -> str | None:
        """Why ``size`` bytes of blob would not fit on the disk now, with nothing else cached."""
        free = free_bytes(self._lock_fd)
        if free is None or (need := self._charge_whole(size)) <= self._used + free - self.headroom:
            return None
        return f"the cache's disk has not the room for {need} bytes of blob ({free} free)"

    def _charge_whole(self, size: int) -> int:
        whole, rest = divmod(size, self.layout.chunk_size)
        return whole * self._charge(self.layout.chunk_size) + self._charge(rest)

    def touch(self, key: ChunkKey) -> None:
        """Count a use of ``key`` (served by this process) for eviction. No-op when absent."""
        with self._mutex:
            if key in self._lru:
                self._lru.move_to_end(key)

    def blob_usage(self) -> dict[Digest, int]:
        """The bytes cached of each blob with a chunk cached."""
        usage: Counter[Digest] = Counter()
        with self._mutex:
            for key, entry in self._lru.items():
                usage[key.digest] += entry.length
        return dict(usage)

    def drop(self, key: ChunkKey) -> bool:
        """Remove chunk ``key`` now, pinned or not: its bytes are not to be trusted.

        A reader that has the file open keeps its bytes (the kernel keeps the
        inode); everyone after it finds the chunk missing and fetches it again.
        Returns whether it was cached.
        """
        with self._mutex:
            if key not in self._lru:
                return False
            self._forget(key)
            path = self.layout.chunk_path(key)
            path.unlink(missing_ok=True)
            # Under the mutex, as in eviction: a put holds it from making the
            # blob's directory to renaming its chunk in.
            with contextlib.suppress(OSError):  # not empty: other chunks of the blob
                os.rmdir(path.parent)
        return True

    def stats(self) -> CacheStats:
        with self._mutex:
            return CacheStats(
                self._used,
                self.limit_bytes,
                len(self._lru),
                sum(1 for key in self._pins if key in self._lru),
                self.layout.chunk_size,
            )

    # Pins

    def pin(self, key: ChunkKey) -> None:
        """Keep ``key`` from eviction until as many ``unpin``. ``key`` need not be cached yet."""
        with self._mutex:
            self._pins[key] += 1

    def unpin(self, key: ChunkKey) -> None:
        with self._mutex:
            self._pins[key] -= 1
            if self._pins[key] <= 0:
                del self._pins[key]
                if self._used > self.limit_bytes:
                    self._evict_for(0)

    @contextlib.contextmanager
    def pinned(self, keys: Iterable[ChunkKey]) -> Iterator[None]:
        held = list(keys)
        for key in held:
            self.pin(key)
        try:
            yield
        finally:
            for key in held:
                self.unpin(key)

    # Writing

    def put(self, key: ChunkKey, data: bytes, *, replace: bool = False) -> Path:
        """Store ``data`` as chunk ``key``, atomically; returns the chunk's path.

        ``data`` is the whole chunk: ``chunk_size`` bytes, fewer only as the
        blob's last. The caller verified it: a chunk is trusted by everyone
        once it is in place. Idempotent: a chunk already cached is kept as it
        is, unless ``replace``: then its file is renamed over, so that a
        reader never finds the chunk missing (one with the old file open
        keeps its bytes). A crash at any point leaves the chunk either whole
        or absent.
        """
        if not 0 < len(data) <= self.layout.chunk_size:
            raise ValueError(f"a chunk of {len(data)} bytes (1 to {self.layout.chunk_size})")
        path = self.layout.chunk_path(key)
        charge = self._charge(len(data))
        free = free_bytes(self._lock_fd)  # before the mutex: readers wait on it, not a statfs
        with self._mutex:
            self._refuse_unwanted(key)
            if key in self._lru and not replace:
                self._lru.move_to_end(key)
                return path
            # Room first, and reserved, so that concurrent writers cannot together pass
            # the limit, nor the headroom (looked at again if short: others evict too).
            self._evict_for(charge)
            if free is not None and (need := self.headroom + self._reserved + charge) > free:
                fresh = free_bytes(self._lock_fd)  # 0 is an answer: a full disk
                self._evict_for_disk(need - (free if fresh is None else fresh))
            self._reserved += charge
        try:
            tmp, mtime = self._room_or_evict(lambda: write_tmp(self.layout.tmp_dir, data), charge)
        except BaseException:
            with self._mutex:
                self._reserved -= charge
            raise
        with self._mutex:
            self._reserved -= charge
            if key in self._lru and not replace:  # another writer of the same chunk won
                os.unlink(tmp)
                return path
            try:
                self._refuse_unwanted(key)  # released while it was written
                self._room_or_evict(lambda: self._place(tmp, path), charge, locked=True)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            if key in self._lru:
                self._forget(key)
            self._add(key, len(data), mtime)
        return path

    def _place(self, tmp: Path, path: Path) -> None:
        make_dirs(path.parent, self.layout.chunks_dir)  # inodes: may find no room
        os.replace(tmp, path)

    def _room_or_evict(self, write: Callable[[], T], charge: int, *, locked: bool = False) -> T:
        """``write()``; when the filesystem refuses it for want of room, evict a headroom's
        worth of chunks (more than the free space said was missing: it was wrong, or
        inodes ran out) and try once more. ``locked``: the caller holds the mutex."""
        try:
            return write()
        except OSError as error:
            if not no_room(error):
                raise
        with contextlib.nullcontext() if locked else self._mutex:
            self._evict_for_disk(self.headroom + charge)
        return write()  # a failure now is the read's

    # Accounting and eviction (callers hold the mutex)

    def _charge(self, length: int) -> int:
        return -(-length // self._block) * self._block

    def _add(self, key: ChunkKey, length: int, used_at: float) -> None:
        self._lru[key] = _Entry(length, self._charge(length), used_at)
        self._used += self._charge(length)
        if length < self.layout.chunk_size:
            self._ends[key.digest] = key.index * self.layout.chunk_size + length

    def _forget(self, key: ChunkKey) -> None:
        entry = self._lru.pop(key)
        self._used -= entry.charged
        if entry.length < self.layout.chunk_size:
            self._ends.pop(key.digest, None)

    def _evict_for(self, need: int) -> None:
        """Evict until ``need`` more bytes fit under the limit, or nothing more may go."""
        self._evict_down_to(self.limit_bytes - need)

    def _evict_down_to(self, target: int) -> None:
        # First pass: a chunk a mount read since we last looked is kept, as
        # recently used. Second pass: only pins protect.
        for second_chance in (True, False):
            for key in list(self._lru):
                if self._used + self._reserved <= target:
                    return
                if self._pins.get(key):
                    continue
                if second_chance and self._was_read_since(key):
                    self._lru.move_to_end(key)
                    continue
                self._evict(key)

    def _evict_for_disk(self, short: int) -> None:
        """Evict until the chunks charged ``short`` bytes less, or nothing more may go."""
        if short > 0:
            self._evict_down_to(self._used + self._reserved - short)

    def _was_read_since(self, key: ChunkKey) -> bool:
        entry = self._lru[key]
        try:
            mtime = os.stat(self.layout.chunk_path(key)).st_mtime
        except FileNotFoundError:
            return False  # gone already: _evict forgets it
        if mtime > entry.used_at:
            entry.used_at = mtime
            return True
        return False

    def _evict(self, key: ChunkKey) -> None:
        path = self.layout.chunk_path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._forget(key)
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a mount is reading it right now
            os.unlink(path)
            self._forget(key)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):  # not empty: other chunks of the blob
            os.rmdir(path.parent)

    def _rebuild(self) -> None:
        """Clear what a crash or another chunk size left; take stock of the chunks."""
        found = take_stock(self.layout)
        with self._mutex:
            for mtime, key, length in sorted(found):
                self._add(key, length, mtime)
            self._evict_for(0)
