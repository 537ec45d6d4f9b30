"""Reading gzip and tar layers still in a registry, through their published index.

``PublishedLayers`` is a ``TarRangeReader`` over layers whose index was
published beside their image (``lazyfs.index.published``): it serves bytes
of a layer's *uncompressed tar stream*, at the offsets its index gives, from
a blob read by range through a ``BlobSource`` (the cache daemon's client:
each miss fetched once, however many mounts ask).

The blob is never trusted: it is read only in whole *spans* (the published index
cuts the blob at every gzip checkpoint), and each span is checked against its sha256
before anything of it is used, kept or inflated. A gzip layer is inflated
(``lazyfs.blobs.gzip_inflate``) from the checkpoint before the read, from verified
span bytes only, with that checkpoint's window: the last 32 KiB of the interval
before when that one is inflated (kept, or inflated first when the two were asked
for together, back along such a chain in a loop bounded by ``chain_bytes``: a file
of many intervals then costs one window, not one each), checked against its own
digest as every interval is; else read by range from the index's windows blob and
checked against its sha256 in the index before it is inflated. A tar layer's bytes
are the span bytes themselves. A span or window that does not match is dropped from
the blob source's cache (``evict``) and read once more through this mount's origin
alone (``read_again``). A second mismatch (or a first, from a source that cannot
drop what it has) is confirmed: the index and the bytes disagree, so the layer's
index is bad for this reader; that is logged once, naming the layer, the span and
both digests, and every read of the layer is OSError(EIO) from then on, with nothing
fetched or evicted again (the cache's chunks are shared with other mounts). So is a
window that is not 32 KiB of zlib, verified bytes that do not inflate from the
index's checkpoint, and a checkpoint's interval (the tar stream from it to the next,
inflated whole) that does not match its sha256 in the index: a forged checkpoint or
window. A blob source that fails is an OSError(EIO) for that read, logged. The FUSE
handlers answer EIO, never a wrong byte.

Given its entries, it also holds each regular file's entry to the tar
headers before its data before serving any of it
(``lazyfs.blobs.entry_check``): EIO for a file they do not describe.

Verified spans are kept, least recently used first out, up to ``max_bytes``
(``spans``); a span several threads want at once is fetched once.  A gzip
read inflates the whole checkpoint interval around it, which is kept a
while, once checked, for the reads that come back to it
(``lazyfs.blobs.inflated``); so the mount's chunk cache passes reads through
as they are asked (``reads_exact``), and a small file costs the intervals it
is in, not those of an aligned piece around it.  Windows are kept as fetched
(``windows``, verified): the daemon keeps them in memory only (``lazyfs.cache.pieces``),
and a mount inflates from them while it restarts, or the registry is gone.
Blocking and thread-safe, as ``TarRangeReader`` says.
"""

from __future__ import annotations

import bisect
import errno
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lazyfs.blobs.entry_check import EntryCheck
from lazyfs.blobs.gzip_inflate import inflate_from
from lazyfs.blobs.inflated import Kept, read_intervals
from lazyfs.blobs.published_ahead import (
    CHAIN_BYTES,
    DEFAULT_REACH_BYTES,
    Need,
    ask_for,
    interval_needs,
    reads_windows,
    tail_is_window,
    unpacked_window,
    walk_back,
)
from lazyfs.blobs.published_asks import Asks
from lazyfs.blobs.published_heard import Unheard
from lazyfs.blobs.published_once import Once, Spans, mismatch
from lazyfs.index.artifact import WINDOW, Span
from lazyfs.index.model import IndexEntry, LayerIndex
from lazyfs.index.published import PublishedData, load_published
from providers.digest import Digest
from providers.errors import BadImage, LazyfsError
from providers.manifest import Layer
from providers.source import BlobSource, Evicting

DEFAULT_KEEP_BYTES = 32 << 20
WINDOW_KEEP_BYTES = 8 << 20  # some 600 windows as fetched (zlib of 32 KiB each)
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
        reach_bytes: int = DEFAULT_REACH_BYTES,
    ) -> None:
        self._layers = dict(layers)
        # Files are held to their tar headers only for layers whose entries are given.
        self._checks = {
            digest: EntryCheck(str(digest), self._reader(digest), loader)
            for digest, loader in (entries or {}).items()
        }
        self._blobs = blobs
        self._lock = threading.Lock()
        self.spans = Spans(max_bytes)  # verified, kept a while
        self.windows = Spans(WINDOW_KEEP_BYTES)  # verified, by windows blob and offset
        self._spans: Once[bytes] = Once()  # each fetched by one thread
        # Layers whose index a span or window confirmed wrong: why, for each EIO after.
        self._bad: dict[Digest, LazyfsError] = {}
        self._intervals = Kept()
        self.reach_bytes = reach_bytes
        self.chain_bytes = CHAIN_BYTES  # inflated in a row for want of a window, at most
        self._asks = Asks(blobs)
        self._asks.replayed(self._layers, getattr(blobs, "replaying", None) or [])  # the trace
        self._inflating: Once[bytes] = Once()  # each interval inflated by one thread
        self._unheard = Unheard(blobs, self._asks.chained)  # read-ahead's fetches, for the trace
        self.fetches = 0
        self.inflations = 0  # one per interval kept, or per read not kept

    def reads_exact(self, digest: Digest) -> bool:
        return True  # reads pass the mount's chunk cache as asked (ranges.ExactReader)

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
        extents = check.extents if (check := self._checks.get(digest)) is not None else None
        # Before anything (the check's headers too) is fetched for it; a program's read again
        # once served: read-ahead may have kept some of it while it waited (published_heard).
        self._unheard.read(digest, data, offset, length, extents)
        if check is not None:
            if data.points is not None and not check.refused():
                # What this read and the next of its file will inflate, asked at once.
                starts, ends = check.extents()
                self._asks.miss(digest, data, starts, ends, offset, length,
                                budget=self.reach_bytes, chain_bytes=self.chain_bytes,
                                kept=self._intervals.get, unheld=self._unheld)  # fmt: skip
            check.check(offset, length)
        got = self._stream(digest, data, offset, length)
        self._unheard.heard(digest, data, offset, length, extents)
        return got

    def _reader(self, digest: Digest) -> Callable[[int, int], bytes]:
        return lambda offset, length: self._stream(digest, self._layers[digest], offset, length)

    def _stream(self, digest: Digest, data: PublishedData, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if data.points is None:
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
        def fetch() -> bytes:
            piece = self._fetch(digest, span)
            self.spans.put((digest, number), piece)
            return piece

        return self._spans.get((digest, number), lambda: self.spans.get((digest, number)), fetch)

    def _fetch(
        self, digest: Digest, span: Span, *, source: Digest | None = None, what: str = "blob span"
    ) -> bytes:
        """``span`` of the blob ``source`` (by default the layer ``digest``'s own), checked."""
        self._refuse_if_bad(digest)  # a read that waited on the span that proved it bad
        blob = digest if source is None else source
        try:
            piece = self._read(blob, span)
            if (problem := mismatch(digest, span, piece, what)) is None:
                return piece
            if isinstance(self._blobs, Evicting):
                # Bytes corrupted on the way are seldom corrupted twice: drop, read again.
                log.warning("%s; dropping it from the cache and reading it again", problem)
                self._blobs.evict(blob, span.offset, span.length, str(problem))
                piece = self._read(blob, span, self._blobs.read_again)
                if (problem := mismatch(digest, span, piece, what)) is None:
                    return piece
        except LazyfsError as error:
            log.error("layer %s: cannot read %s at %d: %s", digest, what, span.offset, error)
            raise OSError(errno.EIO, f"layer {digest}: {error}") from error
        self._mark_bad(digest, problem)
        raise OSError(errno.EIO, f"layer {digest}: {problem}") from problem

    def _mark_bad(self, digest: Digest, problem: LazyfsError) -> None:
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

    def _read(self, digest: Digest, span: Span, read: Callable[..., bytes] | None = None) -> bytes:
        with self._lock:
            self.fetches += 1
        return (read or self._blobs.read_range)(digest, span.offset, span.length)

    # -- gzip ----------------------------------------------------------------

    def _inflated(self, digest: Digest, data: PublishedData, offset: int, length: int) -> bytes:
        inflate = lambda number: self._whole(digest, data, number)  # noqa: E731
        return read_intervals(self._intervals, digest, data.bounds, offset, length, inflate)

    def _whole(
        self, digest: Digest, data: PublishedData, number: int, tail: bytes | None = None,
        *, walk: bool = True,
    ) -> bytes:  # fmt: skip
        """Interval ``number``, kept or inflated (by one thread: the others wait for it), kept.

        ``tail``: the interval before it, inflated by the caller; else looked
        for (``_before``, walking back a chain only when ``walk``).
        """
        start = data.bounds[number]

        def inflate() -> bytes:
            before = tail if tail is not None else self._before(digest, data, number, walk=walk)
            got = self._interval(digest, data, number, before)
            self._intervals.put(digest, start, got)
            return got

        return self._inflating.get((digest, number), lambda: self._intervals.get(digest, start),
                                   inflate)  # fmt: skip

    def _before(
        self, digest: Digest, data: PublishedData, number: int, *, walk: bool = True
    ) -> bytes | None:
        """The interval before ``number``, when its tail can stand for ``number``'s window.

        Kept, or, when ``walk`` and ``number`` was asked for without its
        window (``Asks.miss``: the interval before came with it), inflated
        first, from where ``walk_back`` says, each from the one before's tail
        (a loop, bounded in bytes) and held to its digest as every interval is.
        """
        if not tail_is_window(data, number):
            return None
        bounds = data.bounds
        found = self._intervals.get(digest, bounds[number - 1])
        if found is not None or not walk or not self._asks.is_chained(digest, number):
            return found
        look = lambda n: self._intervals.get(digest, bounds[n])  # noqa: E731
        chained = lambda n: self._asks.is_chained(digest, n)  # noqa: E731
        start, found = walk_back(data, number, look, chained, self.chain_bytes)
        for n in range(start, number):
            self._unheard.read(digest, data, bounds[n], bounds[n + 1] - bounds[n])
            found = self._whole(digest, data, n, found, walk=False)  # no walk again: walk_back
        return found

    def _interval(
        self, digest: Digest, data: PublishedData, number: int, before: bytes | None
    ) -> bytes:
        """Interval ``number`` of the tar stream, inflated whole and checked against its digest.

        ``before``: the interval before it, whose tail is its window (``_before``), or None.
        """
        assert data.points is not None  # a gzip layer's
        point = data.points[number]
        with self._lock:
            self.inflations += 1
        from_tail = before is not None and tail_is_window(data, number)
        # From a tail no ask chained it to: chained now if a walk back from it reaches a
        # window asked (Asks.within), else its window is asked, for a walk to it later.
        own = not from_tail or not self._asks.within(digest, data, number, self.chain_bytes)
        self._ask_ahead(digest, data, number, window=own)
        window = None
        if before is not None and from_tail:
            window = before[-WINDOW:]
            self._unheard.tail(data, number)  # for an earlier lazyfs's replay of the trace
        elif point.window is not None:
            window = self._window(digest, data, point.window)

        def read(at: int, size: int) -> bytes:
            return self.blob_bytes(digest, at, min(size, self.span_end(digest, at) - at))

        length = data.bounds[number + 1] - point.position
        try:
            got = inflate_from(
                data.points[0], point, window, read, (data.size, data.tar_size), point.position,
                length,
            )  # fmt: skip
        except (OSError, ValueError) as error:
            if isinstance(error, OSError) and error.errno == errno.EIO:
                raise  # a span that could not be had or did not verify: logged, EIO already
            problem: LazyfsError = BadImage(
                f"layer {digest}: its blob does not inflate from the published checkpoint at"
                f" {point.offset} ({error})"
            )
            self._mark_bad(digest, problem)
            raise OSError(errno.EIO, str(problem)) from error
        where = Span(point.position, length, point.sha256)
        if (wrong := mismatch(digest, where, got, "inflated interval")) is not None:
            self._mark_bad(digest, wrong)
            raise OSError(errno.EIO, str(wrong)) from wrong
        return got

    def _ask_ahead(
        self, digest: Digest, data: PublishedData, number: int, *, window: bool = True
    ) -> None:
        """Have a caching source fetch what inflating interval ``number`` needs, all at once
        (``lazyfs.blobs.published_ahead``): else its span and window, each a round trip.

        Asked again when a miss asked for it with its file (``Asks``): the
        daemon fetches nothing twice, and an ask that failed or was dropped
        (the daemon restarted) is made good here.
        """
        needs = interval_needs(digest, data, number, window=window)
        if window:
            self._asks.asked_window(digest, number)
        ask_for(self._blobs, self._unheld(digest, data, needs))

    def _unheld(self, digest: Digest, data: PublishedData, needs: list[Need]) -> list[Need]:
        """``needs`` but the ranges of the layer whose spans are all kept verified here
        (a window is not kept)."""
        held = self.spans.holds
        return [n for n in needs if n[0] != digest or not held(digest, data.starts, *n[1:])]

    def _window(self, digest: Digest, data: PublishedData, window: Span) -> bytes:
        """The inflated window at ``window`` of the layer's windows blob, checked first."""
        assert data.windows is not None  # decode gives a gzip layer's points a windows blob
        packed = self.windows.get((data.windows, window.offset))  # checked for this point too
        if packed is None or mismatch(digest, window, packed, "checkpoint window") is not None:
            packed = self._fetch(digest, window, source=data.windows, what="checkpoint window")
            self.windows.put((data.windows, window.offset), packed)  # verified; if no window,
        if (raw := unpacked_window(packed)) is None:  # the layer is refused below for good
            problem = BadImage(
                f"layer {digest}: the window at {window.offset} of its published index's windows"
                f" blob is not {WINDOW} bytes of zlib"
            )
            self._mark_bad(digest, problem)
            raise OSError(errno.EIO, str(problem))
        return raw

    def close(self) -> None:
        """Drop the inflated intervals kept; reads may go on."""
        self._intervals.clear()


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

    reads_windows(blobs, layer.digest, data)
    return index, PublishedLayers({layer.digest: data}, blobs, entries={layer.digest: files}), where
