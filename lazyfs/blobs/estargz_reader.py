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
did not verify, and they are read once more, since bytes corrupted on the
way are seldom corrupted twice.  A second failure is the EIO.

Chunks are up to 4 MiB (ctr-remote's default) while the FUSE reads above
ask for 128 KiB at a time (``lazyfs.blobs.ranges.ChunkCache``), so verified
chunks are kept here, least recently used first out, up to ``max_bytes``,
and a chunk that several threads want at once is fetched once.

A miss also takes the file's next chunks, up to ``follow_bytes`` of the
blob past the one wanted, in the same range read: a program that reads a
file it needs (a binary, a library) reads on into its next chunk, and over a
link each chunk fetched alone would be a round trip more.  Each of them is
verified as any chunk is; one that does not verify is not kept (its read
fetches it again, and gives EIO then if it still does not verify).

Blocking and thread-safe, as ``TarRangeReader`` says.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from lazyfs.index.estargz import inflate_chunk
from lazyfs.index.estargz_chunks import ChunkRow, ChunkTable, loads
from providers.digest import Digest
from providers.errors import DigestMismatch, LazyfsError
from providers.source import BlobSource

DEFAULT_KEEP_BYTES = 32 << 20
# A sixth of a second at 100 Mbit/s: far less than a round trip saved costs on a slow link.
DEFAULT_FOLLOW_BYTES = 2 << 20
log = logging.getLogger(__name__)


@runtime_checkable
class Evicting(Protocol):
    """A blob source that keeps what it reads: told to drop bytes found wrong."""

    def evict(self, digest: Digest, offset: int, length: int, reason: str) -> int: ...


class EstargzChunks:
    """The data spaces of eStargz layers, by digest, from their chunk tables' files.

    ``tables`` maps each layer digest to its chunk table file
    (``LayerData.path`` of an eStargz layer), read on the layer's first read.
    ``blobs`` serves the layers' blobs by range (a registry, the cache
    daemon, the store); it is trusted with nothing: every chunk is checked.
    ``fetches`` counts the range reads made of it; ``follow_bytes`` bounds
    how much of the blob a miss reads past the chunk it wants (the file's
    next chunks; 0: none).
    """

    def __init__(
        self,
        tables: Mapping[Digest, Path],
        blobs: BlobSource,
        *,
        max_bytes: int = DEFAULT_KEEP_BYTES,
        follow_bytes: int = DEFAULT_FOLLOW_BYTES,
    ) -> None:
        self._paths = dict(tables)
        self._blobs = blobs
        self.max_bytes = max_bytes
        self.follow_bytes = follow_bytes
        self._lock = threading.Lock()
        self._tables: dict[Digest, ChunkTable] = {}
        self._kept: OrderedDict[tuple[Digest, int], bytes] = OrderedDict()
        self._bytes = 0
        self._pending: dict[tuple[Digest, int], threading.Event] = {}
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
            data = self._chunk(digest, table, number)
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

    def _chunk(self, digest: Digest, table: ChunkTable, number: int) -> bytes:
        """The verified bytes of chunk ``number`` of layer ``digest``: kept, or fetched once."""
        key = (digest, number)
        while True:
            with self._lock:
                found = self._kept.get(key)
                if found is not None:
                    self._kept.move_to_end(key)
                    return found
                waiting = self._pending.get(key)
                if waiting is None:
                    numbers = self._claim(digest, table, number)
                    break
            waiting.wait()  # then look again: that fetch may have failed
        events = {n: self._pending[(digest, n)] for n in numbers}
        try:
            found = self._fetch(digest, [table.rows[n] for n in numbers])
            with self._lock:
                for n, data in zip(numbers, found, strict=False):
                    self._keep((digest, n), data)
            return found[0]
        finally:
            with self._lock:
                for n in numbers:
                    del self._pending[(digest, n)]
            for event in events.values():
                event.set()

    def _claim(self, digest: Digest, table: ChunkTable, number: int) -> list[int]:
        """Mark chunk ``number`` and the file's next ones (``follow_bytes``) as being fetched.

        Only chunks that nobody has or fetches, one after another in the blob.
        Called with the lock held.
        """
        first = table.rows[number]
        numbers = [number]
        for n in range(number + 1, len(table.rows)):
            row, before = table.rows[n], table.rows[n - 1]
            if row.name != first.name or row.offset < before.end:
                break  # another file's, or sharing a gzip member: left to its own read
            if row.end - first.end > self.follow_bytes:
                break
            if (digest, n) in self._kept or (digest, n) in self._pending:
                break
            numbers.append(n)
        for n in numbers:
            self._pending[(digest, n)] = threading.Event()
        return numbers

    def _fetch(self, digest: Digest, rows: list[ChunkRow]) -> list[bytes]:
        """The verified bytes of ``rows[0]``, then of as many of the rest as verify."""
        with self._lock:
            self.fetches += 1
        row, base = rows[0], rows[0].offset
        length = rows[-1].end - base
        try:
            try:
                raw = self._blobs.read_range(digest, base, length)
                found = [self._inflate(digest, row, raw[: row.end - base])]
            except DigestMismatch as error:
                if not isinstance(self._blobs, Evicting):
                    raise
                log.warning("%s; dropping it from the cache and reading it again", error)
                self._blobs.evict(digest, base, length, str(error))
                length = row.end - base
                with self._lock:
                    self.fetches += 1
                raw = self._blobs.read_range(digest, base, length)
                try:
                    return [self._inflate(digest, row, raw)]
                except DigestMismatch as again:
                    # Not kept either: a later read tries afresh, not this EIO for good.
                    self._blobs.evict(digest, base, length, str(again))
                    raise
        except LazyfsError as error:
            # DigestMismatch, or the blob source's NotFound or TemporaryFailure:
            # to the FUSE handlers, bytes that cannot be had.
            raise OSError(errno.EIO, str(error)) from error
        for after in rows[1:]:
            try:
                found.append(
                    self._inflate(digest, after, raw[after.offset - base : after.end - base])
                )
            except DigestMismatch as error:
                # Nobody waits for it yet: its own read fetches it again (and evicts).
                log.warning("%s; not kept", error)
                break
        return found

    @staticmethod
    def _inflate(digest: Digest, row: ChunkRow, raw: bytes) -> bytes:
        return inflate_chunk(row.chunk(), raw, layer=str(digest), name=row.name)

    def _keep(self, key: tuple[Digest, int], data: bytes) -> None:
        """Keep ``data``, then drop the least recently used chunks past ``max_bytes``."""
        self._kept[key] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes and len(self._kept) > 1:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= len(dropped)
