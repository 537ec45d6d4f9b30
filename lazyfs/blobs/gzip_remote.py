"""Reading gzip and tar layers still in a registry, through their published index.

``PublishedLayers`` is a ``TarRangeReader`` over layers whose index was
published beside their image (``lazyfs.index.published``): it serves bytes
of a layer's *uncompressed tar stream*, at the offsets its index gives,
from a blob read by range through a ``BlobSource`` (the cache daemon's
client: each miss fetched once, however many mounts ask).

The blob is never trusted: it is read only in whole *spans* (the published
index cuts the blob at every gzip checkpoint), and each span is checked
against its sha256 before anything of it is used, kept or inflated.  A gzip
layer is inflated by zran (``indexed_gzip``) from the checkpoint before the
read, over a file object (``_VerifiedBlob``) that hands it verified span
bytes only; a tar layer's bytes are the span bytes themselves.  A span that
does not match is dropped from the blob source's cache (``Evicting``) and
read once more.  A second mismatch (or a first, from a source that cannot
drop what it has) is confirmed: the index and the layer's bytes disagree,
so the layer's index is bad for this reader; that is logged once, naming
the layer, the span and both digests, and every read of the layer is
OSError(EIO) from then on, with nothing fetched or evicted again (the
cache's chunks are shared with other mounts).  A blob source that fails is
an OSError(EIO) for that read, logged.  The FUSE handlers answer EIO, never
a wrong byte.

Given its entries, it also holds each regular file's entry to the tar
headers before its data before serving any of it
(``lazyfs.blobs.entry_check``): EIO for a file they do not describe.

Verified spans are kept, least recently used first out, up to
``max_bytes``; a span several threads want at once is fetched once.  A
gzip read inflates the whole checkpoint interval around it, which is kept a
while for the reads that come back to it (``lazyfs.blobs.inflated``).
Blocking and thread-safe, as ``TarRangeReader`` says: each gzip read takes
a zran handle from a small pool per layer, as ``GzipCheckpoints`` does.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lazyfs.blobs.entry_check import EntryCheck
from lazyfs.blobs.inflated import Kept, read_intervals
from lazyfs.index.artifact import Span
from lazyfs.index.model import IndexEntry, LayerIndex
from lazyfs.index.published import PublishedData, load_published
from providers.digest import Digest
from providers.errors import DigestMismatch, LazyfsError
from providers.manifest import Layer
from providers.source import BlobSource

DEFAULT_KEEP_BYTES = 32 << 20
# Compressed bytes zran asks for at a time; a read is served up to a span's end anyway.
READ_BUFFER = 64 << 10
HANDLES_PER_LAYER = 2
log = logging.getLogger(__name__)


class PublishedLayers:
    """Tar streams of remote layers, by digest, through their published indexes."""

    def __init__(
        self,
        layers: Mapping[Digest, PublishedData],
        blobs: BlobSource,
        *,
        max_bytes: int = DEFAULT_KEEP_BYTES,
        entries: Mapping[Digest, Callable[[], Sequence[IndexEntry]]] | None = None,
    ) -> None:
        self._layers = dict(layers)
        # Files are held to their tar headers only for layers whose entries are given.
        self._checks = {
            digest: EntryCheck(str(digest), self._reader(digest), loader)
            for digest, loader in (entries or {}).items()
        }
        self._blobs = blobs
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[Digest, int], bytes] = OrderedDict()
        self._bytes = 0
        self._pending: dict[tuple[Digest, int], threading.Event] = {}
        self._idle: dict[Digest, list[tuple[Any, _BlobFile]]] = {}
        self._busy = threading.Semaphore(HANDLES_PER_LAYER * max(1, len(self._layers)))
        # Layers whose index a span confirmed wrong: why, for each EIO after.
        self._bad: dict[Digest, DigestMismatch] = {}
        # Each gzip layer's checkpoints (tar offsets), learnt from its first zran handle.
        self._starts: dict[Digest, list[int]] = {}
        self._intervals = Kept()
        self.fetches = 0
        self.inflations = 0  # zran reads: one per interval kept, or per read not kept

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` of layer ``digest``'s tar stream.

        KeyError for a layer not given; OSError(EIO) when a span cannot be
        had or does not verify, and for every read of a layer whose index a
        span confirmed wrong.
        """
        data = self._layers[digest]
        self._refuse_if_bad(digest)
        if length <= 0:
            return b""
        if (check := self._checks.get(digest)) is not None:
            check.check(offset, length)
        return self._stream(digest, data, offset, length)

    def _reader(self, digest: Digest) -> Callable[[int, int], bytes]:
        return lambda offset, length: self._stream(digest, self._layers[digest], offset, length)

    def _stream(self, digest: Digest, data: PublishedData, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if data.checkpoints is None:
            return self.blob_bytes(digest, offset, length)  # a tar layer: the blob is the stream
        return self._inflated(digest, data, offset, length)

    # -- spans ---------------------------------------------------------------

    def span_end(self, digest: Digest, offset: int) -> int:
        """Where the span holding blob offset ``offset`` ends (the blob's end past it)."""
        data = self._layers[digest]
        if offset >= data.size:
            return data.size
        span = data.spans[bisect.bisect_right(data.starts, offset) - 1]
        return span.offset + span.length

    def blob_bytes(self, digest: Digest, offset: int, length: int) -> bytes:
        """Verified bytes ``[offset, offset + length)`` of layer ``digest``'s blob."""
        data = self._layers[digest]
        end = min(offset + length, data.size)
        parts = []
        at = offset
        while at < end:
            number = bisect.bisect_right(data.starts, at) - 1
            span = data.spans[number]
            piece = self._span(digest, number, span)
            lo, hi = at - span.offset, min(end - span.offset, span.length)
            parts.append(piece[lo:hi])
            at = span.offset + hi
        return b"".join(parts)

    def _span(self, digest: Digest, number: int, span: Span) -> bytes:
        key = (digest, number)
        while True:
            with self._lock:
                found = self._kept.get(key)
                if found is not None:
                    self._kept.move_to_end(key)
                    return found
                waiting = self._pending.get(key)
                if waiting is None:
                    done = self._pending[key] = threading.Event()
                    break
            waiting.wait()  # then look again: that fetch may have failed
        try:
            piece = self._fetch(digest, span)
            with self._lock:
                self._keep(key, piece)
            return piece
        finally:
            with self._lock:
                del self._pending[key]
            done.set()

    def _fetch(self, digest: Digest, span: Span) -> bytes:
        self._refuse_if_bad(digest)  # a read that waited on the span that proved it bad
        try:
            piece = self._read(digest, span)
            if (problem := _mismatch(digest, span, piece)) is None:
                return piece
            evict = getattr(self._blobs, "evict", None)
            if evict is not None:
                # Bytes corrupted on the way are seldom corrupted twice: drop, read again.
                log.warning("%s; dropping it from the cache and reading it again", problem)
                evict(digest, span.offset, span.length, str(problem))
                piece = self._read(digest, span)
                if (problem := _mismatch(digest, span, piece)) is None:
                    return piece
        except LazyfsError as error:
            log.error("layer %s: cannot read blob span at %d: %s", digest, span.offset, error)
            raise OSError(errno.EIO, f"layer {digest}: {error}") from error
        self._mark_bad(digest, problem)
        raise OSError(errno.EIO, f"layer {digest}: {problem}") from problem

    def _mark_bad(self, digest: Digest, problem: DigestMismatch) -> None:
        """Refuse every read of ``digest`` from now on; say why once."""
        with self._lock:
            first = digest not in self._bad
            self._bad.setdefault(digest, problem)
        if first:
            log.error("%s; its published index is not used again by this mount: EIO", problem)

    def _refuse_if_bad(self, digest: Digest) -> None:
        with self._lock:
            problem = self._bad.get(digest)
        if problem is not None:
            raise OSError(errno.EIO, f"layer {digest}: {problem}")

    def _read(self, digest: Digest, span: Span) -> bytes:
        with self._lock:
            self.fetches += 1
        return self._blobs.read_range(digest, span.offset, span.length)

    def _keep(self, key: tuple[Digest, int], piece: bytes) -> None:
        self._kept[key] = piece
        self._bytes += len(piece)
        while self._bytes > self.max_bytes and len(self._kept) > 1:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= len(dropped)

    # -- gzip ----------------------------------------------------------------

    def _inflated(self, digest: Digest, data: PublishedData, offset: int, length: int) -> bytes:
        with self._lock:
            starts = self._starts.get(digest)  # None until a zran handle of it was opened
        zran = lambda at, size: self._zran(digest, data, at, size)  # noqa: E731
        return read_intervals(self._intervals, digest, starts, offset, length, zran)

    def _zran(self, digest: Digest, data: PublishedData, offset: int, length: int) -> bytes:
        with self._lock:
            self.inflations += 1
        with self._busy:
            with self._lock:
                pool = self._idle.setdefault(digest, [])
                taken = pool.pop() if pool else None
            try:
                handle, blob = taken if taken is not None else _open(self, digest, data)
            except (OSError, ValueError) as error:
                raise OSError(errno.EIO, f"layer {digest}: its checkpoints: {error}") from error
            blob.failure = None
            try:
                handle.seek(offset)
                parts = []
                left = length
                while left > 0 and (got := handle.read(left)):
                    parts.append(got)
                    left -= len(got)
            except (OSError, ValueError) as error:
                handle.close()  # in any state after a failure: a new one is cheap
                why = blob.failure or error
                raise OSError(
                    errno.EIO, f"layer {digest}: cannot read {length} bytes at {offset}: {why}"
                ) from error
            with self._lock:
                self._idle[digest].append((handle, blob))
            return b"".join(parts)

    def close(self) -> None:
        """Close the idle zran handles; reads may still open new ones."""
        with self._lock:
            handles = [handle for pool in self._idle.values() for handle, _ in pool]
            self._idle.clear()
        self._intervals.clear()
        for handle in handles:
            handle.close()


def open_published(
    layers_dir: Path, layer: Layer, blobs: BlobSource, *, entries: bool = True
) -> tuple[LayerIndex, PublishedLayers, Path] | None:
    """The index of ``layer`` published beside its image, a reader of its tar stream, its dir.

    None when ``layer`` names no published index kept under ``layers_dir``
    (``lazyfs.index.published.load_published``).
    """
    found = load_published(layers_dir, layer, entries=entries)
    if found is None:
        return None
    index, where, data = found

    def files() -> Sequence[IndexEntry]:
        if entries:
            return index.entries
        whole = load_published(layers_dir, layer)
        if whole is None:  # gone since: nothing to hold a file to, so nothing served
            raise OSError(errno.EIO, f"layer {layer.digest}: its published index is gone")
        return whole[0].entries

    return index, PublishedLayers({layer.digest: data}, blobs, entries={layer.digest: files}), where


def _open(reader: PublishedLayers, digest: Digest, data: PublishedData) -> tuple[Any, _BlobFile]:
    # Loaded with the first gzip read.  The unbuffered handle: the buffered one
    # decodes READ_AHEAD bytes past a read, which would need (and fail on) spans
    # the read itself does not.
    from indexed_gzip.indexed_gzip import _IndexedGzipFile  # type: ignore[import-untyped]

    assert data.checkpoints is not None  # a gzip layer's
    blob = _BlobFile(reader, digest, data.size)
    handle = _IndexedGzipFile(
        fileobj=blob,
        auto_build=False,  # the imported index is complete; never decode to extend it
        readbuf_size=READ_BUFFER,
    )
    try:
        # From memory, not a file: see lazyfs.index.gzip_checkpoints.Checkpointer.export.
        handle.import_index(fileobj=io.BytesIO(data.checkpoints.read_bytes()))
        starts = sorted(int(position) for position, _ in handle.seek_points())
    except BaseException:
        handle.close()
        raise
    with reader._lock:
        reader._starts.setdefault(digest, starts)
    return handle, blob


def _mismatch(digest: Digest, span: Span, piece: bytes) -> DigestMismatch | None:
    """None when ``piece`` is the span its published index promised, else why not."""
    got = hashlib.sha256(piece).hexdigest()
    if len(piece) == span.length and got == span.sha256:
        return None
    return DigestMismatch(
        f"layer {digest}: blob span [{span.offset}, {span.offset + span.length}) does not match"
        " its published index",
        expected=f"sha256 {span.sha256} ({span.length} bytes)",
        actual=f"sha256 {got} ({len(piece)} bytes)",
    )


class _BlobFile(io.RawIOBase):
    """A remote blob as the file object a zran handle reads: verified span bytes only.

    zran seeks and reads through it; every byte it returns comes from
    ``PublishedLayers.blob_bytes``, checked.  ``failure`` keeps why a read
    failed, which zran's own error does not say.
    """

    def __init__(self, reader: PublishedLayers, digest: Digest, size: int) -> None:
        super().__init__()
        self.reader = reader
        self.digest = digest
        self.size = size
        self.position = 0
        self.failure: OSError | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, never past the end of the span holding the position.

        Short reads are no end of file to zran (only b"" is): it asks again
        when it needs more, so the next span is fetched (and can fail) only
        for a read that needs its bytes.
        """
        if size is None or size < 0:
            size = self.size - self.position
        size = min(size, self.reader.span_end(self.digest, self.position) - self.position)
        try:
            got = self.reader.blob_bytes(self.digest, self.position, size)
        except OSError as error:
            self.failure = error
            raise
        self.position += len(got)
        return got

    def readinto(self, buffer: Any) -> int:
        got = self.read(len(buffer))
        buffer[: len(got)] = got
        return len(got)
