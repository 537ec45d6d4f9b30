"""Reading eStargz layers' files chunk by chunk through a ``BlobSource``, every chunk verified.

``EstargzChunks`` is a ``TarRangeReader`` over eStargz layers: it serves
bytes of a layer's *data space* (its files end to end, the offsets an
eStargz index gives: ``lazyfs.index.estargz_chunks``), so the merged tree's
reads (``DataRef``: digest, offset, size) reach it exactly as they reach a
tar file.  A read maps to the chunks of the layer's chunk table that cover
it; each chunk's compressed bytes are read from the blob
(``BlobSource.read_range``, the range ``[offset, end)`` its table row
gives), inflated, and checked against its ``chunkDigest`` before any byte
of it is served (``lazyfs.index.estargz.inflate_chunk``).  A chunk that
does not verify is an OSError(EIO) naming the layer, the file and both
digests, as is a blob source that fails: the FUSE handlers answer EIO,
never wrong bytes, and nothing unverified is kept.

Nor is it kept below: a blob source that caches what it read for others
(the cache daemon's client, ``Evicting``) is told to drop the bytes that
did not verify, and they are read once more (``read_again``: through this
mount's registry and repository alone, as the cache's chunks and fetches
are every origin's, and a hostile repository may answer its own bytes for
an honest layer's digest), since bytes corrupted on the way are seldom
corrupted twice.  A second failure is the EIO.

Chunks are up to 4 MiB (ctr-remote's default) while the FUSE reads above
ask for 128 KiB at a time (``lazyfs.blobs.ranges.ChunkCache``), so verified
chunks are kept here, least recently used first out, up to ``max_bytes``,
and a chunk that several threads want at once is fetched once.

A chunk fetched by a thread whose reads no prefetch trace records (a first
start's read-ahead, ``lazyfs.blobs.trace_run.unrecorded``) is served from
here to the program without its blob source seeing the read: the source's
watcher is told of its range then, on the program's first read of it, so
the trace keeps the program's reads, in its order.

Blocking and thread-safe, as ``TarRangeReader`` says.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from lazyfs.blobs.trace_run import Watched, recorded
from lazyfs.index.estargz import inflate_chunk, read_length
from lazyfs.index.estargz_chunks import ChunkRow, ChunkTable, loads
from providers.digest import Digest
from providers.errors import DigestMismatch, LazyfsError
from providers.source import BlobSource, Evicting

DEFAULT_KEEP_BYTES = 32 << 20
log = logging.getLogger(__name__)


class EstargzChunks:
    """The data spaces of eStargz layers, by digest, from their chunk tables' files.

    ``tables`` maps each layer digest to its chunk table file
    (``LayerData.path`` of an eStargz layer), read on the layer's first read
    unless ``loaded`` holds the table already (the mount that built it;
    ValueError for a table of a layer not in ``tables``, or of another layer).
    ``blobs`` serves the layers' blobs by range (a registry, the cache
    daemon, the store); it is trusted with nothing: every chunk is checked.
    ``fetches`` counts the chunks read from it.
    """

    def __init__(
        self,
        tables: Mapping[Digest, Path],
        blobs: BlobSource,
        *,
        max_bytes: int = DEFAULT_KEEP_BYTES,
        loaded: Mapping[Digest, ChunkTable] | None = None,
    ) -> None:
        self._paths = dict(tables)
        self._blobs = blobs
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._tables: dict[Digest, ChunkTable] = dict(loaded or {})
        for digest, table in self._tables.items():
            if digest not in self._paths:
                raise ValueError(f"a chunk table given for {digest}, which is not read here")
            if table.digest != digest:
                raise ValueError(f"layer {digest}: the chunk table given is {table.digest}'s")
        self._kept: OrderedDict[tuple[Digest, int], bytes] = OrderedDict()
        self._bytes = 0
        self._pending: dict[tuple[Digest, int], threading.Event] = {}
        # Kept chunks an unrecorded thread fetched that no recorded one has read yet.
        self._unheard: set[tuple[Digest, int]] = set()
        self.fetches = 0

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` of layer ``digest``'s data space.

        Short only at its end, b"" at or past it; the gaps between files
        read as zeros and fetch nothing.  Raises KeyError for a
        layer not given, ValueError for a negative range, OSError(EIO) when
        a chunk cannot be had or does not verify.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"negative range {offset}+{length}")
        table = self._table(digest)
        end = min(offset + length, table.size)
        parts = []
        at = offset
        for number in table.covering(offset, end):
            row = table.rows[number]
            if row.start + row.size <= at:
                continue  # the row before ``offset`` ends in the gap that holds it
            if row.start > at:
                parts.append(bytes(row.start - at))  # a gap between files: no file's bytes
            data = self._chunk(digest, number, row)
            lo, hi = max(at - row.start, 0), min(end - row.start, row.size)
            parts.append(data if (lo, hi) == (0, row.size) else data[lo:hi])
            at = row.start + hi
        if at < end:
            parts.append(bytes(end - at))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _table(self, digest: Digest) -> ChunkTable:
        table = self._tables.get(digest)  # a dict read is atomic: no lock once loaded
        if table is not None:
            return table
        path = self._paths[digest]
        try:
            table = loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise OSError(errno.EIO, f"layer {digest}: its chunk table {path}: {error}") from None
        if table.digest != digest:
            raise OSError(errno.EIO, f"layer {digest}: its chunk table {path} is another layer's")
        with self._lock:
            return self._tables.setdefault(digest, table)

    def _chunk(self, digest: Digest, number: int, row: ChunkRow) -> bytes:
        """The verified bytes of chunk ``number`` of layer ``digest``: kept, or fetched once."""
        key = (digest, number)
        while True:
            with self._lock:
                found = self._kept.get(key)
                waiting = None if found is not None else self._pending.get(key)
                heard = found is not None and key in self._unheard and recorded()
                if found is not None:
                    self._kept.move_to_end(key)
                    if heard:
                        self._unheard.discard(key)
                elif waiting is None:
                    done = self._pending[key] = threading.Event()
                    break
            if found is not None:
                if heard:  # outside the lock: the watcher takes its own
                    self._heard(digest, row)
                return found
            if waiting is not None:
                waiting.wait()  # then look again: that fetch may have failed
        try:
            data = self._fetch(digest, row)
            with self._lock:
                self._keep(key, data)
                if not recorded():
                    self._unheard.add(key)
            return data
        finally:
            with self._lock:
                del self._pending[key]
            done.set()

    def _heard(self, digest: Digest, row: ChunkRow) -> None:
        """Tell the blob source's watcher of chunk ``row``, read as if now (module docstring)."""
        if isinstance(self._blobs, Watched) and (watcher := self._blobs.watcher) is not None:
            watcher.read(digest, row.offset, read_length(row.chunk()))

    def _fetch(self, digest: Digest, row: ChunkRow) -> bytes:
        with self._lock:
            self.fetches += 1
        length = read_length(row.chunk())
        try:
            try:
                raw = self._blobs.read_range(digest, row.offset, length)
                return inflate_chunk(row.chunk(), raw, layer=str(digest), name=row.name)
            except DigestMismatch as error:
                if not isinstance(self._blobs, Evicting):
                    raise
                log.warning("%s; dropping it from the cache and reading it again", error)
                self._blobs.evict(digest, row.offset, length, str(error))
                with self._lock:
                    self.fetches += 1
                raw = self._blobs.read_again(digest, row.offset, length)
                try:
                    return inflate_chunk(row.chunk(), raw, layer=str(digest), name=row.name)
                except DigestMismatch as again:
                    # Not kept either: a later read tries afresh, not this EIO for good.
                    self._blobs.evict(digest, row.offset, length, str(again))
                    raise
        except LazyfsError as error:
            # DigestMismatch, or the blob source's NotFound or TemporaryFailure:
            # to the FUSE handlers, bytes that cannot be had.
            raise OSError(errno.EIO, str(error)) from error

    def _keep(self, key: tuple[Digest, int], data: bytes) -> None:
        """Keep ``data``, then drop the least recently used chunks past ``max_bytes``."""
        self._kept[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._kept) > 1:
            gone, dropped = self._kept.popitem(last=False)
            self._bytes -= len(dropped)
            self._unheard.discard(gone)
