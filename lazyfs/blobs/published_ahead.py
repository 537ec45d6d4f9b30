"""What a reader of layers through their published indexes asks of a caching source ahead.

Inflating interval ``n`` of a gzip layer (``lazyfs.blobs.gzip_remote``)
needs the compressed bytes from its checkpoint's first byte to the next
checkpoint's (the published index cuts the blob into spans there; the
first interval starts at the gzip header) and the checkpoint's window, a
range of the layer's windows blob.  Each missed one is a round trip to the
registry; asked one after the other, they add up.  So a source that
fetches in the background (the cache daemon's client: ``Prefetches``) is
asked for all of them (``interval_needs``, ``ask_for``) before the reader
waits on any.  Reading the next intervals ahead blindly, when reads go in order, was
measured (the Debian cold start, index format 2) to cost a third more bytes
over the link and no time.  But a program that misses in a file most often
goes on to fault in more of that file (a binary's or a library's pages,
here and there), each miss a round trip of its own where an eStargz chunk
(a file, up to its chunk size) would have brought it in one.  So on a miss
the reader asks for the intervals from the missed one up to the one holding
the last byte of the file the read is in (``file_reach``), as one range of
the layer and one of its windows, bounded by ``reach_bytes`` compressed
(``intervals_to``): a file costs about one round trip, as on eStargz.

Only hints: nothing here is served, and what the source fetches is checked
by the read that uses it.  A windows blob is no layer of the image: the
cache daemon's client is told of it (``reads_windows``, ``AddsBlobs``) when
the layer is opened.
"""

from __future__ import annotations

import bisect
import logging
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from lazyfs.blobs.inflated import interval
from lazyfs.index.artifact import WINDOW, first_byte
from lazyfs.index.published import PublishedData
from providers.digest import Digest
from providers.errors import LazyfsError, TemporaryFailure
from providers.source import BlobSource

log = logging.getLogger(__name__)

# At most this many compressed bytes (spans and windows) asked for at once for one
# file: about what an eStargz chunk of 4 MiB is compressed (measured: see CHANGELOG).
DEFAULT_REACH_BYTES = 2 << 20
TAR_BLOCK = 512
# The longest range the cache daemon fetches as a piece, as asked, not as the chunks
# around it (``lazyfs.cache.pieces.MAX_PIECE``).
PIECE_BYTES = 256 << 10
# At most this many bytes of tar stream inflated in a row so that an interval asked for
# without its window inflates from the tail of the one before (``chain_start``).
CHAIN_BYTES = 2 << 20
# A range of a blob: (blob, offset, length).
Need = tuple[Digest, int, int]


@runtime_checkable
class Prefetches(Protocol):
    """A blob source that fetches a range in the background when asked
    (``lazyfs.cache.client.CacheClient.prefetch``); a read of it meanwhile waits on that."""

    def prefetch(self, digest: Digest, offset: int, length: int) -> int: ...


@runtime_checkable
class AddsBlobs(Protocol):
    """A blob source that can be told of a blob besides the image's layers
    (``lazyfs.cache.client.CacheClient.add_blob``)."""

    def add_blob(self, digest: Digest, like: Digest, size: int) -> None: ...


def interval_needs(
    digest: Digest, data: PublishedData, number: int, *, window: bool = True
) -> list[tuple[Digest, int, int]]:
    """The ranges (blob, offset, length) inflating interval ``number`` of layer ``digest`` reads.

    Its compressed bytes (from the blob's start for the first interval,
    which inflates from the gzip header), then its window, if it has one
    and ``window`` (not when the interval before is inflated first: its
    tail is the window).  Nothing for a tar layer or an interval past the
    last.
    """
    points = data.points
    if points is None or not 0 <= number < len(points):
        return []
    point = points[number]
    start, end = compressed_span(data, number)
    needs = [(digest, start, end - start)] if end > start else []
    if window and point.window is not None and data.windows is not None:
        needs.append((data.windows, point.window.offset, point.window.length))
    return needs


def tail_is_window(data: PublishedData, number: int) -> bool:
    """Whether interval ``number``'s window is the last ``WINDOW`` bytes of the one before.

    The window is the ``WINDOW`` bytes of the stream before its checkpoint:
    all in the interval before when that one is as long.
    """
    points = data.points
    return (
        points is not None
        and 0 < number < len(points)
        and points[number].window is not None
        and data.bounds[number] - data.bounds[number - 1] >= WINDOW
    )


def chain_start(
    data: PublishedData,
    number: int,
    kept: Callable[[int], bool],
    chained: Callable[[int], bool],
    budget: int = CHAIN_BYTES,
) -> int:
    """The first interval to inflate, in order up to ``number - 1``, for interval ``number``
    to inflate from the tail of the one before.

    ``number - 1`` at least; back from it while that interval was asked for
    without its window (``chained``: it inflates from the tail of the one
    before it in turn) and the one before is not ``kept``, as long as the
    tar bytes of the intervals so walked stay within ``budget``.  The walk
    is a loop, bounded: a file of many intervals, or an index of dense
    checkpoints, whose intervals the reader no longer keeps costs at most
    ``budget`` inflated, then the first one's own window.  An interval is
    chained only when this walk, with nothing kept, ends at an interval not
    chained (``lazyfs.blobs.published_asks.Asks.within``): one whose window
    was asked, so one fetched before, not one no one fetched.
    """
    bounds = data.bounds
    first = number - 1
    spent = bounds[number] - bounds[first]
    while first > 0 and chained(first) and not kept(first - 1):
        spent += bounds[first] - bounds[first - 1]
        if spent > budget:
            break
        first -= 1
    return first


def walk_back(
    data: PublishedData,
    number: int,
    look: Callable[[int], bytes | None],
    chained: Callable[[int], bool],
    budget: int = CHAIN_BYTES,
) -> tuple[int, bytes | None]:
    """``chain_start`` with ``look(n)``, interval ``n`` if kept now, and the kept interval
    it stopped at (the one before the first), as it was found; None when it stopped for
    another reason.

    Held, not looked up again: another thread may evict it before the chain's first
    inflates from its tail, and that one's own window may never have been fetched (with
    the registry gone since, it is an EIO).
    """
    held: dict[int, bytes | None] = {}

    def kept(n: int) -> bool:
        held[n] = look(n)
        return held[n] is not None

    first = chain_start(data, number, kept, chained, budget)
    return first, held.get(first - 1)


def unpacked_window(packed: bytes) -> bytes | None:
    """The ``WINDOW`` bytes a window of a windows blob holds (zlib); None when it is not."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(packed, WINDOW + 1)
    except zlib.error:
        return None
    if len(raw) != WINDOW or not inflater.eof or inflater.unused_data:
        return None
    return raw


def file_reach(starts: Sequence[int], ends: Sequence[int], offset: int, length: int) -> int:
    """Where the file a read of ``[offset, offset + length)`` is for ends, if past the read.

    ``starts`` and ``ends``: each file's data in the tar stream, sorted by
    start.  A mount's read is within one file's data; a read of the
    stream by another reader (a test's, aligned pieces) may reach several
    files: it is taken to be for the file holding its first byte, or else
    for the file that starts in it and holds more than half of it (a large
    file whose header the read starts before).  Not for a file that merely
    starts in it: a piece of small files whose last runs on is most often
    for one of the others (measured: asking to that one's end fetched intervals never
    read).  The read's end when neither runs past it.  A hint: a forged
    index makes it wrong, and nothing but how much is fetched ahead
    depends on it.
    """
    end = offset + length
    first = bisect.bisect_right(starts, offset) - 1
    if first >= 0 and ends[first] > end:
        return ends[first]
    last = bisect.bisect_left(starts, end) - 1
    if last > first and ends[last] > end and 2 * (end - starts[last]) > length:
        return ends[last]
    return end


def headers_before(
    starts: Sequence[int], ends: Sequence[int], offset: int, end: int
) -> tuple[int, int] | None:
    """The tar headers ``[start, end)`` of the first file a read of ``[offset, end)`` reaches.

    A reader that holds each file to its tar headers before serving it
    (``lazyfs.blobs.entry_check``) parses, for the first file whose data
    the read reaches, the members from the end of the previous file's data
    (rounded up to a tar block) to that file's data: before the read, and
    often in the interval before the read's (or, for a large file read
    from its middle, far before), inflated for those few hundred bytes.
    None when the read reaches no file or those headers are inside it.
    ``starts`` and ``ends`` as ``file_reach``.
    """
    number = bisect.bisect_right(starts, offset) - 1
    if number < 0 or ends[number] <= offset:
        number += 1  # the read starts between files: the next one is the first it reaches
    if number >= len(starts) or starts[number] >= end:
        return None
    previous = -(-ends[number - 1] // TAR_BLOCK) * TAR_BLOCK if number else 0
    if previous >= offset:
        return None
    return previous, min(starts[number], offset)


def compressed_span(data: PublishedData, number: int) -> tuple[int, int]:
    """The blob bytes ``[start, end)`` inflating interval ``number`` of a gzip layer reads."""
    assert data.points is not None  # a gzip layer's
    points = data.points
    start = 0 if number == 0 else first_byte(points[number])
    end = data.size if number + 1 == len(points) else first_byte(points[number + 1])
    return start, max(start, end)


def intervals_to(data: PublishedData, first: int, reach: int, budget: int) -> int:
    """The last interval to ask for with interval ``first``, for a read reaching ``reach``.

    The interval holding the tar stream's byte ``reach - 1``, or an earlier
    one where the compressed bytes of the intervals from ``first`` on (their
    spans and windows) would pass ``budget``; ``first`` at least.
    """
    points = data.points
    if points is None or not 0 <= first < len(points):
        return first
    last = max(first, interval(data.bounds, min(reach, data.bounds[-1]) - 1))
    spent = 0
    for number in range(first, last + 1):
        start, end = compressed_span(data, number)
        window = points[number].window
        spent += end - start + (window.length if window is not None else 0)
        if spent > budget and number > first:
            return number - 1
    return last


def merged(
    needs: Iterable[tuple[Digest, int, int]], most: int | None = None
) -> list[tuple[Digest, int, int]]:
    """``needs`` with the ranges of one blob that meet or overlap made one, in first-asked order.

    The spans of intervals in a row are one range, and so are their
    windows: one request each.  ``most``: no range made longer than that.
    """
    out: list[tuple[Digest, int, int]] = []
    for blob, offset, length in needs:
        for i, (other, start, size) in enumerate(out):
            if other == blob and offset <= start + size and start <= offset + length:
                lo = min(start, offset)
                hi = max(start + size, offset + length)
                if most is not None and hi - lo > most:
                    continue
                out[i] = (blob, lo, hi - lo)
                break
        else:
            out.append((blob, offset, length))
    return out


def ask_for(
    blobs: BlobSource, needs: Iterable[tuple[Digest, int, int]], most: int | None = None
) -> bool:
    """Have ``blobs`` fetch ``needs`` in the background, if it can; False when an ask failed.

    A failure is logged only. A temporary one (the daemon gone, or saying it
    cannot take them now) ends the asks: each would wait on it, for nothing.
    ``most``: as ``merged`` says (``PIECE_BYTES``, for windows to be fetched as pieces).
    A source that does not fetch ahead (a test's) reads what it needs when asked.
    """
    if not isinstance(blobs, Prefetches):
        return True
    taken = True
    for blob, offset, length in merged(needs, most):
        try:
            blobs.prefetch(blob, offset, length)
        except LazyfsError as error:
            # Not needed to serve the read: it asks for what it still lacks itself.
            log.info("blob %s: [%d, +%d) not prefetched: %s", blob, offset, length, error)
            taken = False
            if isinstance(error, TemporaryFailure):
                break
    return taken


def reads_windows(blobs: BlobSource, layer: Digest, data: PublishedData) -> None:
    """Have ``blobs`` read the layer's windows blob, if it needs telling (``AddsBlobs``).

    The windows blob is in the layer's repository, and read by exact
    ranges as the layer is (``lazyfs.cache.client.remote_blob`` makes a
    layer read through its published index exact), its windows as pieces,
    not the chunks around them (``lazyfs.cache.pieces``; neighbours asked
    together are one piece, a replayed trace's too): a read here
    fetches whole spans, each checked, and a window only where a read inflates;
    what the daemon would read ahead of them is seldom what the next read
    needs (measured: 6% more of the image crossed before a program's first
    line).  Any other source (a test's) reads what it has.
    """
    if data.windows is not None and isinstance(blobs, AddsBlobs):
        blobs.add_blob(data.windows, layer, data.windows_size)
