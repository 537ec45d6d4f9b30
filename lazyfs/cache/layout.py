"""The cache directory on disk, and reading it directly from a mount process.

The daemon owns the directory (``lazyfs.cache.chunks.DiskCache`` writes and
evicts); a mount process only reads it, with no round trip to the daemon for
a chunk that is there. The layout is the contract between them::

    CACHE_DIR/                          0700, the machine's other users stay out
      lock                              flock(LOCK_EX) by the one daemon that owns the dir
      daemon.sock                       the daemon's Unix socket (``socket_path``)
      tmp/                              chunks being written; emptied at every start
      chunks-<CHUNK_SIZE>/              the chunk size in bytes: a cache made with
                                        another size is never misread
        <algorithm>/<hex>/              one directory per blob, e.g. sha256/3f2a...
          <index>                       lowercase hex, at least 8 digits: the blob's bytes
                                        [index * CHUNK_SIZE, (index + 1) * CHUNK_SIZE),
                                        shorter only when the blob ends inside it

Content-addressed by blob digest and aligned chunk index: two images sharing a
layer share its chunks, and two overlapping reads of a blob name the same
chunks, so "one fetch per missing chunk" is a lookup by name. Chunks are
fixed-size and aligned (64 KiB by default) rather than the ranges readers ask
for because then a chunk's identity needs no overlap bookkeeping and eviction
frees whole files. Small, because what a container reads first is mostly
small files scattered through its layers (an eStargz layer's reader asks for
each file's gzip member, often a few KiB): each miss fetches at most two
chunks' worth it did not ask for, 5 ms of transfer each at 100 Mbit/s beside a
20 ms round trip (1 MiB chunks moved several times the bytes a start needs
and waited 85 ms a chunk). Adjacent missing chunks still go out as one
request, so a big read costs no more round trips. A 10 GiB cache is 160,000
files.

A chunk file appears whole or not at all: it is written under ``tmp/``,
fsynced, then renamed into place, and never changed afterwards. So a reader
trusts any chunk file it finds, and a short one means the blob ends there.

Readers take a shared flock on a chunk file while they read it: the daemon
evicts only files it can lock exclusively, so a chunk a mount is reading right
now is never evicted (and were it unlinked under an open descriptor, the
reader would still get its bytes: the kernel keeps the inode). Readers also
set the file's mtime when they read it: the daemon's least-recently-used order
counts their hits, which it does not see otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from providers.digest import Digest, algorithm, hex_part, parse_digest
from providers.errors import BadImage
from providers.fileio import pread_all

CHUNK_SIZE = 64 << 10
SOCKET_NAME = "daemon.sock"
_INDEX_RE = re.compile(r"^[0-9a-f]{8,16}$")


def _index_of(name: str) -> int | None:
    """The chunk index a file name spells, when it is the one spelling of it."""
    if not _INDEX_RE.match(name):
        return None
    index = int(name, 16)
    return index if name == _index_name(index) else None


def _index_name(index: int) -> str:
    return f"{index:08x}"


def socket_path(cache_dir: Path) -> Path:
    """Where the daemon of ``cache_dir`` listens."""
    return cache_dir / SOCKET_NAME


@dataclass(frozen=True, order=True)
class ChunkKey:
    """Chunk ``index`` of blob ``digest``: its bytes [index * size, (index + 1) * size)."""

    digest: Digest
    index: int


def chunk_indices(offset: int, length: int, chunk_size: int = CHUNK_SIZE) -> range:
    """The indices of the chunks that hold bytes [offset, offset + length); empty for length 0."""
    if offset < 0 or length < 0:
        raise ValueError(f"negative range {offset}+{length}")
    if length == 0:
        return range(0)
    return range(offset // chunk_size, (offset + length - 1) // chunk_size + 1)


@dataclass(frozen=True)
class Layout:
    """Where things are under one cache directory, for one chunk size. Pure paths, no I/O."""

    root: Path
    chunk_size: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError(f"chunk size {self.chunk_size} is not positive")

    @property
    def lock_path(self) -> Path:
        return self.root / "lock"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def chunks_dir(self) -> Path:
        return self.root / f"chunks-{self.chunk_size}"

    def blob_dir(self, digest: Digest) -> Path:
        return self.chunks_dir / algorithm(digest) / hex_part(digest)

    def chunk_path(self, key: ChunkKey) -> Path:
        if key.index < 0:
            raise ValueError(f"negative chunk index {key.index}")
        return self.blob_dir(key.digest) / _index_name(key.index)

    def key_of(self, path: Path) -> ChunkKey | None:
        """The chunk a path under ``chunks_dir`` names, or None when it names none."""
        try:
            relative = path.relative_to(self.chunks_dir)
        except ValueError:
            return None
        if len(relative.parts) != 3:
            return None
        index = _index_of(relative.parts[2])
        try:
            digest = parse_digest(f"{relative.parts[0]}:{relative.parts[1]}")
        except BadImage:
            return None
        return None if index is None else ChunkKey(digest, index)

    def span(self, key: ChunkKey) -> tuple[int, int]:
        """The blob bytes [start, end) chunk ``key`` holds when it is a whole chunk."""
        start = key.index * self.chunk_size
        return start, start + self.chunk_size


class ChunkFiles:
    """Reads blob ranges straight from the chunk files, as a mount process does.

    Never writes a chunk and never asks the daemon: a range with a chunk
    missing is a miss (None), for the caller to ask the daemon about.
    Thread-safe (no state but the layout).
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def read_chunk(self, key: ChunkKey, start: int = 0, length: int | None = None) -> bytes | None:
        """Bytes [start, start + length) of chunk ``key`` (to its end by default); None if absent.

        Short when the chunk is: the blob ends inside it.
        """
        try:
            fd = os.open(self.layout.chunk_path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            # The pin: eviction skips a chunk it cannot lock exclusively.
            fcntl.flock(fd, fcntl.LOCK_SH)
            wanted = self.layout.chunk_size - start if length is None else length
            data = pread_all(fd, wanted, start)
            # Recency is a hint for eviction, not worth failing a read over.
            with contextlib.suppress(OSError):
                os.utime(fd)
            return data
        finally:
            os.close(fd)

    def read_range(
        self, digest: Digest, offset: int, length: int, blob_size: int | None = None
    ) -> bytes | None:
        """Blob bytes [offset, offset + length) from the cache, or None when a chunk is missing.

        Short only at the blob's end, as ``BlobSource.read_range`` is: a short
        chunk ends the blob. A range that starts past the blob's end is a miss
        here unless the blob's last chunk is cached and shows where it ends.
        With ``blob_size`` (the caller's manifest's), an end before it is a
        miss: another image's smaller claim for the digest cut that chunk.
        """
        size = self.layout.chunk_size
        parts: list[bytes] = []
        for index in chunk_indices(offset, length, size):
            base = index * size
            lo = max(offset - base, 0)
            hi = min(offset + length - base, size)
            data = self.read_chunk(ChunkKey(digest, index), lo, hi - lo)
            if data is None:
                if parts or not self._ends_before(digest, index):
                    return None
                break  # the blob ends before this chunk
            parts.append(data)
            if len(data) < hi - lo:
                break  # the blob ends inside this chunk
        found = b"".join(parts)
        if blob_size is not None and len(found) < min(length, blob_size - offset):
            return None
        return found

    def _ends_before(self, digest: Digest, index: int) -> bool:
        """Whether a short chunk just before chunk ``index`` shows that the blob ends there."""
        if index == 0:
            return False
        try:
            size = os.stat(self.layout.chunk_path(ChunkKey(digest, index - 1))).st_size
        except FileNotFoundError:
            return False
        return size < self.layout.chunk_size

    def blob_chunks(self, digest: Digest) -> Iterator[ChunkKey]:
        """The chunks of ``digest`` present now (a snapshot: eviction may remove them next)."""
        try:
            names = os.listdir(self.layout.blob_dir(digest))
        except FileNotFoundError:
            return
        for index in sorted(i for i in map(_index_of, names) if i is not None):
            yield ChunkKey(digest, index)
