"""A mount's side of the cache daemon: a BlobSource that reads the shared cache.

``CacheClient.read_range`` reads the chunks that are cached straight from the
cache files (``lazyfs.cache.layout.ChunkFiles``), with no round trip, and
asks the daemon only for a range with a chunk missing; the daemon answers
once the chunks are in the cache, and the client reads them from the files
too. So every byte a mount serves comes from a cache file, and the socket
carries only requests and where to read; but for a piece (a published
index's window, a few KB: ``lazyfs.cache.pieces``; or, replaying a trace,
the part of a chunk the trace covers only in part: ``lazyfs.cache.partial``),
which the daemon fetches alone and answers in its reply.

When the daemon is gone (killed, restarting), cached chunks keep being read
as before. A miss waits for the daemon to come back, trying again with a
growing pause, for at most ``wait`` seconds counted from the first failure,
then raises ``CacheUnavailable`` saying why; the FUSE boundary answers EIO
and logs it. A chunk evicted between the daemon's answer and the read is
asked for again.

Blocking and thread-safe: a mount's reads run in worker threads
(``trio.to_thread``, see ``lazyfs.blobs.ranges``). Each connection carries
one request at a time; a thread takes an idle one from a small pool or
opens another, so concurrent misses do not queue behind each other
(``lazyfs.cache.client_link``, the client's socket side).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from lazyfs.cache.blobstate import refusal
from lazyfs.cache.client_blob import RemoteBlob as RemoteBlob  # where callers have found it
from lazyfs.cache.client_blob import remote_blob as remote_blob
from lazyfs.cache.client_link import CacheUnavailable as CacheUnavailable  # where callers find it
from lazyfs.cache.client_link import DaemonLink
from lazyfs.cache.client_stream import ReadWatcher
from lazyfs.cache.connection import status as status  # where callers have found it
from lazyfs.cache.layout import CHUNK_SIZE, ChunkFiles, ChunkKey, Layout
from lazyfs.cache.messages import (
    MAX_READ_LENGTH,
    Background,
    BackgroundOk,
    BlobInfo,
    BlobRange,
    Evict,
    EvictOk,
    Prefetch,
    PrefetchOk,
    Read,
    ReadOk,
    Status,
    StatusOk,
)
from lazyfs.cache.partial import Cut, PartialChunks, Span
from lazyfs.cache.pieces import MAX_PIECE
from providers.digest import Digest
from providers.errors import DigestMismatch, LazyfsError, NotFound, TemporaryFailure
from providers.source import RangeStream

log = logging.getLogger(__name__)

DEFAULT_WAIT = 60.0  # how long a miss waits for a daemon that is gone
_EVICTED_RETRIES = 3
_RANGES_PER_REQUEST = 1024  # a prefetch's ranges, well within the daemon's bound


class Quarantined(LazyfsError):
    """The blob's bytes contradict what this mount's image says, or its origin served wrong
    ones (``lazyfs.cache.blobstate.refusal``): none of it is served to this mount."""


class CacheClient(DaemonLink):
    """A BlobSource over the daemon of ``cache_dir`` for the blobs in ``blobs``.

    ``read_range`` and ``open`` take any digest of ``blobs`` (NotFound for others). Not
    verified: the caller checks what it serves, as for any BlobSource.
    """

    def __init__(
        self,
        cache_dir: Path,
        blobs: Mapping[Digest, RemoteBlob],
        *,
        wait: float = DEFAULT_WAIT,
        hint: bool = False,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        super().__init__(cache_dir, wait=wait, hint=hint)
        # Until the daemon says otherwise (``_agree_layout``): it may cut another size.
        self.files = ChunkFiles(Layout(cache_dir, chunk_size))
        self.blobs = dict(blobs)
        self._agreed: set[Digest] = set()  # blobs whose verdict agrees with this image
        self._tails_asked = False
        self.watcher: ReadWatcher | None = None  # told every range read (a trace's recorder)
        self.replaying: list[tuple[Digest, list[tuple[int, int]]]] = []  # a trace's ranges
        self._partial: tuple[object, PartialChunks] | None = None  # of ``replaying``
        self._pieces_read: set[tuple[Digest, Span]] = set()  # read whole once: kept by then

    # BlobSource

    def open(self, digest: Digest) -> BinaryIO:
        self._blob(digest)
        return io.BufferedReader(RangeStream(self.read_range, digest), 1 << 20)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        blob = self._blob(digest)
        if offset < 0 or length < 0:
            raise ValueError(f"negative range {offset}+{length}")
        if blob.size is not None:
            length = max(0, min(length, blob.size - offset))
        if length == 0:
            return b""
        if self.watcher is not None:
            self.watcher.read(digest, offset, length)
        parts = []
        # The daemon bounds one read: a bigger range is asked in pieces.
        for start in range(offset, offset + length, MAX_READ_LENGTH):
            piece = min(MAX_READ_LENGTH, offset + length - start)
            data = self._read(digest, blob, start, piece)
            parts.append(data)
            if len(data) < piece and blob.size is not None:  # another image's claim cut it
                got = f"{len(data)} bytes"
                raise DigestMismatch(f"{digest} at {start}", expected=f"{piece} bytes", actual=got)
            if len(data) < piece:
                break  # the blob ends here
        return b"".join(parts)

    # What a mount asks besides reads

    def layer_mounted(self, digest: Digest, prefetch: tuple[int, int] | None) -> None:
        """Tell the daemon a layer is mounted: fetch blob bytes ``prefetch`` (start, end) now,
        in one request, and the rest of the blob in the background (when the daemon does).

        Neither is needed to serve a read, so a failure is logged, not raised.
        """
        blob = self._blob(digest)
        try:
            if prefetch is not None and prefetch[1] > prefetch[0] and not self.replaying:
                self.prefetch(digest, prefetch[0], prefetch[1] - prefetch[0])
            if blob.size:
                self.background(digest)
        except LazyfsError as error:
            log.warning("layer %s: the cache daemon did not take its prefetch: %s", digest, error)

    def prefetch(self, digest: Digest, offset: int, length: int) -> int:
        """Have the daemon fetch blob bytes [offset, offset + length) now; returns chunks queued
        (and pieces: the parts of a replayed trace's partial chunks, ``lazyfs.cache.partial``).

        Not waited for: a read of those bytes meanwhile waits on that fetch.
        """
        groups = [(False, [(offset, length)])]
        if self.replaying:
            groups = self._partials().asks(digest, offset, length)
        return self._prefetch(digest, groups, replay=False)

    def replay(self, digest: Digest, ranges: Sequence[tuple[int, int]]) -> int:
        """Have the daemon fetch blob ranges (offset, length) in this order, yielding to
        reads (a trace replayed, ``PrefetchRequest.replay``): the parts of chunks the
        trace (``replaying``) covers in part as pieces (``lazyfs.cache.partial``), the
        rest as chunks. Returns the chunks and pieces queued."""
        return self._prefetch(digest, self._partials().requests(digest, ranges), replay=True)

    def _prefetch(
        self, digest: Digest, groups: list[tuple[bool, list[tuple[int, int]]]], *, replay: bool
    ) -> int:
        """One request of each group of ranges (as pieces or not), in order; what they queued."""
        blob, queued = self._blob(digest), 0
        for piece, cut in groups:
            asked = [BlobRange(digest, start, min(MAX_READ_LENGTH, o + n - start))
                     for o, n in cut for start in range(o, o + n, MAX_READ_LENGTH)]  # fmt: skip
            for at in range(0, len(asked), _RANGES_PER_REQUEST):
                part = tuple(asked[at : at + _RANGES_PER_REQUEST])
                answer = self._ask(Prefetch(next(self._ids), part, blob.origin, blob.size, replay,
                                            blob.piece or piece))  # fmt: skip
                if not isinstance(answer, PrefetchOk):
                    what = "a replay" if replay else "a prefetch"
                    raise TemporaryFailure(f"the cache daemon answered {what} with {answer}")
                queued += answer.chunks_queued
        return queued

    def background(self, digest: Digest) -> BlobInfo:
        """Have the daemon fetch the whole blob at low priority, then check it; its state now."""
        blob = self._blob(digest)
        if not blob.size:
            raise ValueError(f"blob {digest}: a background fetch needs its size")
        request = Background(
            next(self._ids), digest, blob.origin, blob.size, blob.diff_id, blob.media_type
        )
        answer = self._ask(request)
        if not isinstance(answer, BackgroundOk):
            raise TemporaryFailure(f"the cache daemon answered a background fetch with {answer}")
        return answer.state

    def evict(self, digest: Digest, offset: int, length: int, reason: str) -> int:
        """Have the daemon drop the chunks and pieces of blob bytes [offset, offset + length).

        For bytes found wrong (``reason``): no reader is served them again,
        the next read fetches them afresh. Returns how many went.
        """
        self._blob(digest)
        answer = self._ask(Evict(next(self._ids), BlobRange(digest, offset, length), reason))
        if not isinstance(answer, EvictOk):
            raise TemporaryFailure(f"the cache daemon answered an eviction with {answer}")
        return answer.chunks_evicted

    def read_again(self, digest: Digest, offset: int, length: int) -> bytes:
        """Blob bytes found wrong and ``evict``-ed, read once more through this mount's origin
        alone: not from the cache files, nor from another origin's fetch of them (any
        repository may name any digest and answer bytes of its own), in pieces the daemon
        answers in its replies (``Read.own``). Short only where the blob ends."""
        blob = self._blob(digest)
        end = offset + length if blob.size is None else min(offset + length, blob.size)
        parts = []
        for start in range(offset, end, MAX_PIECE):
            piece = min(MAX_PIECE, end - start)
            # Extents from a daemon that predates ``own``: it read it as any piece.
            asked = BlobRange(digest, start, piece)
            data = self._read_answer(
                Read(next(self._ids), asked, blob.origin, blob.size, True, True, own=True)
            )
            if data is None:
                raise TemporaryFailure(f"chunks of {digest} were evicted as soon as they came")
            parts.append(data)
            if len(data) < piece:
                break  # the blob ends here
        return b"".join(parts)

    def _ask_tails(self, digest: Digest, length: int) -> None:
        """On the first read of an exact blob's tail, prefetch every other one's too: a mount
        reads its eStargz layers' TOCs (their last bytes) one after another. Once a mount."""
        with self._lock:
            if self._tails_asked:
                return
            self._tails_asked = True
        others = [d for d, b in self.blobs.items() if d != digest and b.exact and b.size]
        self.prefetch_tails(others, length)

    def prefetch_tails(self, digests: Iterable[Digest], length: int) -> int:
        """Have the daemon fetch the last ``length`` bytes of each of ``digests``; chunks queued.
        A refusal is logged, not raised, and ends it (the reads ask again)."""
        queued = 0
        for digest in digests:
            size = self._blob(digest).size or 0
            start = max(0, size - length)
            try:
                queued += self.prefetch(digest, start, size - start)
            except LazyfsError as error:
                log.info("layer %s: the cache daemon did not take its TOC's prefetch: %s",
                         digest, error)  # fmt: skip
                break
        return queued

    def add_blob(self, digest: Digest, like: Digest, size: int) -> None:
        """Read ``digest`` (``size`` bytes, in ``like``'s repository) too, by pieces; once."""
        origin = self._blob(like).origin
        self.blobs.setdefault(digest, RemoteBlob(origin, size, exact=True, piece=True))

    def _blob(self, digest: Digest) -> RemoteBlob:
        blob = self.blobs.get(digest)
        if blob is None:
            raise NotFound(f"blob {digest} is not one this mount reads remotely", digest=digest)
        return blob

    def _partials(self) -> PartialChunks:
        """The partial chunks of the trace replayed (``replaying``, as it is now), in the
        daemon's chunks (asked on first contact)."""
        self._agree_layout()
        made, steps, size = self._partial, self.replaying, self.files.layout.chunk_size
        if made is None or made[0] is not steps or made[1].chunk_size != size:
            sizes = {digest: blob.size for digest, blob in self.blobs.items()}
            made = self._partial = (steps, PartialChunks(steps, size, sizes))
        return made[1]

    def _read(
        self, digest: Digest, blob: RemoteBlob, offset: int, length: int, piece: bool = False
    ) -> bytes:
        if digest not in self._agreed:
            reason, final = refusal(self.cache_dir, digest, blob.origin, blob.size, blob.diff_id)
            if reason is not None:
                raise Quarantined(reason)
            if final:
                self._agreed.add(digest)
        data = self.files.read_range(digest, offset, length, blob.size)
        if data is not None:
            return data
        if blob.exact and offset + length == blob.size:
            self._ask_tails(digest, length)
        if self._agree_layout():  # it may have these bytes where we did not look
            data = self.files.read_range(digest, offset, length, blob.size)
            if data is not None:
                return data
        if self.replaying and not piece:  # a trace's partial chunks are read as their parts
            cut = self._partials().split(digest, offset, length)
            if len(cut) > 1 or cut[0][2] is not None:
                return self._read_cut(digest, blob, cut)
        for _ in range(_EVICTED_RETRIES):
            data = self._read_answer(Read(next(self._ids), BlobRange(digest, offset, length),
                                          blob.origin, blob.size, blob.exact,
                                          blob.piece or piece))  # fmt: skip
            if data is not None:
                return data
        raise TemporaryFailure(f"chunks of {digest} were evicted as soon as they were fetched")

    def _read_answer(self, request: Read) -> bytes | None:
        """The bytes the daemon answers ``request`` with, in its reply or in the cache files
        it points at; None when a chunk went from them meanwhile."""
        answer = self._ask(request)
        if not isinstance(answer, ReadOk):
            raise TemporaryFailure(f"the cache daemon answered a read with {answer}")
        asked = request.range.length
        if answer.data is not None and len(answer.data) > asked:
            raise TemporaryFailure(f"the cache daemon answered {len(answer.data)} bytes"
                                   f" for a read of {asked}")  # fmt: skip
        return self._gather(request.range.digest, answer) if answer.data is None else answer.data

    def _read_cut(self, digest: Digest, blob: RemoteBlob, cut: list[Cut]) -> bytes:
        """A read cut at a replayed trace's partial chunks (``PartialChunks.split``): a part
        read the first time as the whole piece the replay asks (one fetch of it, whoever
        comes first), then as itself (the daemon cuts it from the piece it keeps), the rest
        as chunks. What more than one cut lacks is asked at once first."""
        with self._lock:
            new = {p for _, _, p in cut if p is not None and (digest, p) not in self._pieces_read}
        size = blob.size
        missing = [(o, n) for o, n, p in cut
                   if p is None and self.files.read_range(digest, o, n, size) is None]  # fmt: skip
        if len(new) + len(missing) > 1:
            try:  # chunks first: a piece inside a chunk coming is cut from it, not fetched
                pieces = sorted((start, end - start) for start, end in new)
                self._prefetch(digest, [(False, missing), (True, pieces)], replay=False)
            except CacheUnavailable:
                raise  # gone past its wait: the reads would wait as long again
            except LazyfsError:
                pass  # a hint: each read asks again
        out = []
        for offset, length, piece in cut:
            if piece is None or piece not in new:
                out.append(self._read(digest, blob, offset, length, piece is not None))
                continue
            start, end = piece
            whole = self._read(digest, blob, start, end - start, True)
            with self._lock:
                self._pieces_read.add((digest, piece))
            out.append(whole[offset - start : offset - start + length])
        return b"".join(out)

    def _agree_layout(self) -> bool:
        """Read chunk files where the daemon writes them: ask its chunk size on first contact;
        whether the layout changed. A daemon started by older code keeps running after an
        upgrade, cutting chunks of another size into another directory: looking in ours,
        every miss would find its chunks "evicted" as soon as they were fetched."""
        if self._layout_agreed:
            return False
        answer = self._ask(Status(next(self._ids)))
        if not isinstance(answer, StatusOk) or answer.chunk_size <= 0:
            raise TemporaryFailure(f"the cache daemon answered a status request with {answer}")
        changed = answer.chunk_size != self.files.layout.chunk_size
        if changed:
            log.info("the cache daemon at %s cuts %d-byte chunks; reading those",
                     self._socket, answer.chunk_size)  # fmt: skip
            self.files = ChunkFiles(Layout(self.cache_dir, answer.chunk_size))
        self._layout_agreed = True
        return changed

    def _gather(self, digest: Digest, answer: ReadOk) -> bytes | None:
        """The bytes the answer points at, from the files; None when a chunk went meanwhile."""
        parts = []
        size = self.files.layout.chunk_size
        for extent in answer.extents:
            # Read where the layout puts the chunk, not at the path the socket names.
            key = ChunkKey(digest, extent.blob_offset // size)
            data = self.files.read_chunk(key, extent.blob_offset % size, extent.length)
            if data is None or len(data) != extent.length:
                return None
            parts.append(data)
        return b"".join(parts)
