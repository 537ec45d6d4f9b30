"""Ranged reads of layer data, and the bounded chunk cache the FUSE reads go through.

``TarRangeReader.read_range(digest, offset, length)`` is the one interface
the merged tree's reads use: bytes of a layer's *uncompressed tar stream*,
at the offsets its index gives (not bytes of the blob, which is what
``providers``' blob sources read by range).  ``LocalTars`` serves it from
tar files on this machine (the blob itself for plain tar layers, the
store's uncompressed copy for zstd),
``lazyfs.index.gzip_reads.GzipCheckpoints`` from gzip blobs through
their checkpoints, ``lazyfs.blobs.estargz_reader.EstargzChunks`` from
eStargz blobs, local or not, chunk by chunk through a ``BlobSource`` (their
indexes' offsets are in the layer's data space, not its tar stream: the
reader and the index agree, the tree and the operations need not know),
and ``open_layers`` puts them together per layer as its format's
``layer_data`` says (``lazyfs.index.formats``).

``ChunkCache`` wraps a TarRangeReader for trio: reads are cut into aligned
chunks, misses are read in worker threads under a ``CapacityLimiter`` (they
block, and may decompress), and recently used chunks are kept up to a byte
budget, so a hot file costs no thread and no decompression the second time.

A reader that keeps what it reads itself, and whose misses cost by the
range asked, has ``reads_exact`` (``ExactReader``: layers read through their
published indexes, ``lazyfs.blobs.gzip_remote``).  ``ChunkCache`` passes
reads of such a layer through as they come, one worker thread each, neither
cut into chunks nor kept: an aligned chunk around a small file often ran
into the next checkpoint interval, whose compressed span and window were
then fetched for bytes nobody read (measured on the bench's image: 1 MB
more over the link, and a slower start).

A reader that can answer without blocking has ``read_resident`` as well
(``LocalTars``: a ``preadv2(RWF_NOWAIT)``, which the kernel answers from the
page cache or refuses with EAGAIN, never waiting on the disk).  ``ChunkCache``
asks it first, in the event loop: a local layer whose pages are cached, as
they are once any container of the image has run, then costs one system call
per FUSE read, not a hop to a worker thread and back (some 50-100 us each,
most of a fresh mount's reads), and its page cache is its only cache.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

from lazyfs.index.model import LayerData
from providers.digest import Digest
from providers.fileio import pread_all
from providers.source import BlobSource

if TYPE_CHECKING:
    from lazyfs.index.estargz_chunks import ChunkTable

CHUNK_SIZE = 1 << 17  # 128 KiB, what the kernel asks for in one read at most
DEFAULT_CACHE_BYTES = 64 << 20
DEFAULT_THREADS = 8


class TarRangeReader(Protocol):
    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` of layer ``digest``'s tar stream.

        Short only at the end of the stream; b"" at or past it.  Blocking and
        thread-safe.  Raises KeyError for an unknown digest, OSError when the
        bytes cannot be had.
        """
        ...


@runtime_checkable
class ResidentReader(Protocol):
    def read_resident(self, digest: Digest, offset: int, length: int) -> bytes | None:
        """The ``length`` bytes at ``offset`` if they can be had now without blocking, else None.

        None says nothing about the bytes: ``read_range`` then reads them (or
        raises).  Never blocks on I/O, so trio's event loop may call it.
        """
        ...


@runtime_checkable
class ExactReader(Protocol):
    def reads_exact(self, digest: Digest) -> bool:
        """Whether reads of layer ``digest`` should reach ``read_range`` as they are asked.

        True for a reader that keeps what it reads itself, and whose misses
        cost by the range asked (the module docstring).
        """
        ...


# Errors of a preadv2(RWF_NOWAIT) that mean "not supported here" (an old
# kernel, a file system without it): the thread path is then the only one.
_NO_NOWAIT = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


class LocalTars:
    """Tar streams in local files, by layer digest; descriptors opened once, on first use."""

    def __init__(self, paths: Mapping[Digest, Path]) -> None:
        self._paths = dict(paths)
        self._fds: dict[Digest, int] = {}
        self._lock = threading.Lock()
        self._nowait = hasattr(os, "RWF_NOWAIT")

    def _fd(self, digest: Digest) -> int:
        fd = self._fds.get(digest)  # a dict read is atomic: no lock once open
        if fd is not None:
            return fd
        with self._lock:
            fd = self._fds.get(digest)
            if fd is None:
                fd = self._fds[digest] = os.open(self._paths[digest], os.O_RDONLY | os.O_CLOEXEC)
            return fd

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        return pread_all(self._fd(digest), length, offset)

    def open_all(self) -> None:
        """Open every layer's file now: blocking, for a caller that may wait (a mount, before
        it serves), so that even a layer's first read may be answered by ``read_resident``."""
        for digest in self._paths:
            self._fd(digest)

    def read_resident(self, digest: Digest, offset: int, length: int) -> bytes | None:
        """The range whole if the page cache holds all of it now; else None (``ResidentReader``).

        None too before the layer's first ``read_range``, which opens its
        file (an open may wait on the disk), and for a range that runs past
        the end of the stream: a short answer cannot tell the end of the
        stream from pages not cached, and ``read_range`` can.
        """
        fd = self._fds.get(digest)
        if fd is None or not self._nowait or length <= 0:
            return None
        buffer = bytearray(length)
        try:
            got = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
        except BlockingIOError:  # some page is not cached: the caller reads in a thread
            return None
        except OSError as error:
            if error.errno in _NO_NOWAIT:
                self._nowait = False
            return None  # read_range meets the error again, and raises it
        return bytes(buffer) if got == length else None


class ByLayer:
    """``read_range`` dispatched to one reader per layer digest (KeyError for others).

    ``read_resident`` too, for the readers that have it; None for the others.
    """

    def __init__(self, readers: Mapping[Digest, TarRangeReader]) -> None:
        self._readers = dict(readers)
        # Decompressing or remote readers have none: they are never read in the event loop.
        self._resident = {
            digest: found
            for digest, reader in readers.items()
            if (found := _resident_of(reader)) is not None
        }
        self._exact = {
            digest
            for digest, reader in readers.items()
            if isinstance(reader, ExactReader) and reader.reads_exact(digest)
        }

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        return self._readers[digest].read_range(digest, offset, length)

    def reads_exact(self, digest: Digest) -> bool:
        return digest in self._exact

    def read_resident(self, digest: Digest, offset: int, length: int) -> bytes | None:
        resident = self._resident.get(digest)
        return None if resident is None else resident(digest, offset, length)

    def open_all(self) -> None:
        """``open_all`` of each reader that has it (``LocalTars``); the others open as they read."""
        for reader in {id(reader): reader for reader in self._readers.values()}.values():
            if isinstance(reader, LocalTars):
                reader.open_all()


def _resident_of(reader: object) -> Callable[[Digest, int, int], bytes | None] | None:
    """``reader.read_resident`` if it is a ``ResidentReader``, else None."""
    return reader.read_resident if isinstance(reader, ResidentReader) else None


def open_layers(
    layers: Mapping[Digest, LayerData],
    blobs: BlobSource | None = None,
    *,
    now: bool = False,
    tables: Mapping[Digest, ChunkTable] | None = None,
) -> TarRangeReader:
    """One reader for the layers' streams, each read from where ``layers`` says.

    ``blobs`` serves the blobs of eStargz layers (``LayerData.chunks``) by
    range: a registry client, the cache daemon's client, or the store for
    local blobs; ValueError when such a layer is given without it.  Opens
    nothing yet (descriptors, gzip handles and chunk tables not in
    ``tables`` are opened on first read), but with ``now`` the files of
    plain tar layers, whose reads may then all be answered in the event loop
    (``ByLayer.open_all``; OSError if one cannot be opened). ``tables``:
    eStargz layers' chunk tables in hand, read from their files otherwise
    (ValueError for one that is not an eStargz layer's of ``layers``).
    """
    chunked = {digest: data.path for digest, data in layers.items() if data.chunks}
    if chunked and blobs is None:
        raise ValueError(f"eStargz layers {', '.join(sorted(chunked))} need a blob source")
    if strays := sorted(set(tables or ()) - set(chunked)):
        raise ValueError(f"chunk tables given for {', '.join(strays)}, no eStargz layer here")
    plain = {d: data for d, data in layers.items() if not data.chunks}
    tars = LocalTars({d: data.path for d, data in plain.items() if data.checkpoints is None})
    readers: dict[Digest, TarRangeReader] = dict.fromkeys(plain, tars)
    if checkpointed := {
        digest: (data.path, data.checkpoints)
        for digest, data in plain.items()
        if data.checkpoints is not None
    }:
        # Loaded only for gzip layers; ISA-L inflates them, so reading stored
        # gzip layers loads no indexed_gzip (it builds their checkpoints).
        from lazyfs.index.gzip_reads import GzipCheckpoints

        readers.update(dict.fromkeys(checkpointed, GzipCheckpoints(checkpointed)))
    if chunked:
        assert blobs is not None  # checked above
        # Loaded only for eStargz layers: a mount of plain layers starts without it.
        from lazyfs.blobs.estargz_reader import EstargzChunks

        remote = EstargzChunks(chunked, blobs, loaded=tables)
        readers.update(dict.fromkeys(chunked, remote))
    found = ByLayer(readers)
    if now:
        found.open_all()
    return found


class ChunkCache:
    """Aligned chunks of layer streams, read through ``source``, kept up to ``max_bytes``.

    ``read`` returns exactly the bytes asked for, short only at the end of
    the stream.  A range ``source`` answers by ``read_resident`` (see the
    module docstring) is returned as it is, and neither cut into chunks nor
    kept; so is a range of a layer the source ``reads_exact``, read in a
    worker thread.  Two tasks missing the same chunk read it once.  A task
    cancelled while its chunk is read in a thread waits for the thread
    (trio does not abandon it), so no read is left running unowned.
    """

    def __init__(
        self,
        source: TarRangeReader,
        *,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        threads: int = DEFAULT_THREADS,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        self._limiter = trio.CapacityLimiter(threads)
        # Exact reads wait on one another's spans inside their threads (``reads_exact``):
        # slots of their own, so they never hold up the chunks of other layers.
        self._exact_limiter = trio.CapacityLimiter(threads)
        self._chunks: OrderedDict[tuple[Digest, int], bytes] = OrderedDict()
        self._bytes = 0
        self._pending: dict[tuple[Digest, int], trio.Event] = {}
        self._resident = _resident_of(source)
        self._exact = source.reads_exact if isinstance(source, ExactReader) else None
        self.misses = 0  # chunks read through the source, and exact reads (kept there or not)
        self.resident = 0  # reads answered by read_resident
        # Told each file read from its start, with its first bytes (``lazyfs.fs.predict``).
        self.on_head: Callable[[Any, bytes], None] | None = None

    async def read(self, digest: Digest, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if self._resident is not None:
            found = self._resident(digest, offset, length)
            if found is not None:
                self.resident += 1
                return found
        if self._exact is not None and self._exact(digest):
            self.misses += 1
            return await trio.to_thread.run_sync(
                self.source.read_range, digest, offset, length, limiter=self._exact_limiter
            )
        end = offset + length
        first = offset // self.chunk_size
        last = (end - 1) // self.chunk_size
        parts = []
        for number in range(first, last + 1):
            chunk = await self._chunk(digest, number)
            base = number * self.chunk_size
            # Only the wanted part of each chunk is copied; a whole chunk not at all.
            lo, hi = max(offset - base, 0), min(end - base, len(chunk))
            parts.append(chunk if (lo, hi) == (0, len(chunk)) else chunk[lo:hi])
            if len(chunk) < self.chunk_size:
                break  # end of the stream
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _chunk(self, digest: Digest, number: int) -> bytes:
        key = (digest, number)
        while True:
            found = self._chunks.get(key)
            if found is not None:
                self._chunks.move_to_end(key)
                return found
            pending = self._pending.get(key)
            if pending is None:
                break
            await pending.wait()  # then look again: the reader may have failed
        done = self._pending[key] = trio.Event()
        try:
            self.misses += 1
            data = await trio.to_thread.run_sync(
                self.source.read_range,
                digest,
                number * self.chunk_size,
                self.chunk_size,
                limiter=self._limiter,
            )
            self._keep(key, data)
            return data
        finally:
            del self._pending[key]
            done.set()

    def _keep(self, key: tuple[Digest, int], data: bytes) -> None:
        self._chunks[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._chunks) > 1:
            _, dropped = self._chunks.popitem(last=False)
            self._bytes -= len(dropped)
