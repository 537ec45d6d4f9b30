"""A replayed trace's partial chunks: those it needs only part of, fetched and read as the parts.

The daemon caches a blob in whole chunks (``CHUNK_SIZE``), and a trace's
ranges start and end anywhere: replayed as chunks, each run of them brings
up to a chunk of bytes nobody reads at either end (in the Debian cold
start, 0.8 MB besides the trace's 6.0 MB, on a link that is the start's
bottleneck).  So a chunk the trace's ranges cover only in part is asked
for as those parts, each as a piece (``lazyfs.cache.pieces``: fetched as
it is, kept in the daemon's memory; two parts that meet across a chunk's
edge are one piece), and a chunk they cover whole as a chunk.  The client
reads a range inside a part by asking for that part's whole piece, which
the daemon fetches once whoever asks first (the replay or a read that
overtook it), and cuts it: as a chunk, the read would fetch the whole
chunk again.

Which chunks are partial is decided on the union of all the trace's ranges
of a blob, not range by range: two ranges that meet inside a chunk cover it
together.  A chunk in more than ``CHUNK_PARTS`` parts is fetched whole, and
only the partial chunks the trace reaches first count, while their parts
fit ``MAX_BYTES`` and ``MAX_PARTS``: the daemon keeps pieces in memory,
least recently used out past a budget its mounts share, and a part pushed
out before its read would be fetched again by that read, a round trip on
the program's path.  A read or a range outside the parts is a chunk's, as
without a trace.  Only a hint, like the trace: a piece that was dropped or
never asked is fetched by the read that needs it, and every byte is
verified by its reader as any chunk's.

Pure.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

from lazyfs.cache.pieces import DEFAULT_MAX_BYTES, ENTRY_COST, MAX_KEPT, MAX_PIECE
from providers.digest import Digest
from providers.spans import holding, union

Ranges = Sequence[tuple[int, int]]  # (offset, length)
Span = tuple[int, int]  # (start, end)
Cut = tuple[int, int, Span | None]  # (offset, length, its piece; None: read as chunks)
# The parts asked as pieces, at most: half what the daemon keeps of pieces by default
# (shared by its mounts), counted as it counts them, and a quarter of their number.
MAX_BYTES = DEFAULT_MAX_BYTES // 2
MAX_PARTS = MAX_KEPT // 4
CHUNK_PARTS = 2  # parts of one chunk, at most: past that, the chunk is fetched whole


class PartialChunks:
    """The parts of the chunks that ``steps`` (a trace's ranges by blob, ``trace_run``) cover
    in part, for chunks of ``chunk_size`` bytes of the blobs whose sizes ``sizes`` gives:
    those the trace reaches first, while their parts fit ``max_bytes`` (as the daemon
    counts a piece) and ``max_parts``."""

    def __init__(
        self,
        steps: Sequence[tuple[Digest, Ranges]],
        chunk_size: int,
        sizes: Mapping[Digest, int | None],
        max_bytes: int = MAX_BYTES,
        max_parts: int = MAX_PARTS,
    ) -> None:
        self.chunk_size = chunk_size
        wanted: dict[Digest, list[tuple[int, int]]] = {}
        for digest, ranges in steps:
            size = sizes.get(digest)
            for offset, length in ranges:
                end = offset + length if size is None else min(offset + length, size)
                if 0 <= offset < end:
                    wanted.setdefault(digest, []).append((offset, end))
        # Per blob, per partial chunk: the parts covered, (start, end) in the blob, ascending.
        self._parts: dict[Digest, dict[int, list[tuple[int, int]]]] = {}
        for digest, spans in wanted.items():
            chunks = self._partial(union(spans), sizes.get(digest))
            if chunks:
                self._parts[digest] = chunks
        self._within(steps, max_bytes, max_parts)
        self._indices = {digest: sorted(parts) for digest, parts in self._parts.items()}
        # Each part's piece: the part, or it and the part it meets across a chunk's edge
        # (two at most: a third would make the chunk between them whole).
        self._piece: dict[tuple[Digest, Span], Span] = {}
        for digest, indices in self._indices.items():
            ordered = [part for index in indices for part in self._parts[digest][index]]
            for part, after in zip(ordered, [*ordered[1:], None], strict=True):
                if (digest, part) in self._piece:
                    continue  # taken by the one before
                piece = part
                if after is not None and part[1] == after[0] and after[1] - part[0] <= MAX_PIECE:
                    piece = self._piece[(digest, after)] = (part[0], after[1])
                self._piece[(digest, part)] = piece

    def _within(
        self, steps: Sequence[tuple[Digest, Ranges]], max_bytes: int, max_parts: int
    ) -> None:
        """Keep the partial chunks the trace reaches first, while their parts fit the bounds;
        the others are chunks' work: pieces past the daemon's memory for them would be
        pushed out before they are read."""
        indices = {digest: sorted(parts) for digest, parts in self._parts.items()}
        seen: set[tuple[Digest, int]] = set()
        for digest, ranges in steps:
            parts = self._parts.get(digest)
            if not parts:
                continue
            found = indices[digest]
            for offset, length in ranges:
                first = bisect.bisect_left(found, offset // self.chunk_size)
                last = bisect.bisect_right(found, (offset + length - 1) // self.chunk_size)
                for index in found[first:last]:
                    if (digest, index) in seen:
                        continue
                    seen.add((digest, index))
                    max_parts -= len(parts[index])
                    max_bytes -= sum(end - start + ENTRY_COST for start, end in parts[index])
                    if max_bytes < 0 or max_parts < 0:
                        del parts[index]
        for digest in [d for d, parts in self._parts.items() if not parts]:
            del self._parts[digest]

    def _partial(
        self, spans: list[tuple[int, int]], size: int | None
    ) -> dict[int, list[tuple[int, int]]]:
        """The partial chunks of ``spans`` (disjoint, ascending): only where one begins or
        ends can a chunk be covered in part. One covered in more than ``CHUNK_PARTS`` parts
        is fetched whole: so many pieces would cost more than the chunk."""
        step = self.chunk_size
        covered: dict[int, list[tuple[int, int]]] = {}
        for start, end in spans:
            for index in sorted({start // step, (end - 1) // step}):
                low, high = index * step, (index + 1) * step
                covered.setdefault(index, []).append((max(start, low), min(end, high)))
        partial = {}
        for index, parts in covered.items():
            low, high = index * step, (index + 1) * step
            if size is not None:
                high = min(high, size)
            if parts != [(low, high)] and len(parts) <= CHUNK_PARTS:
                partial[index] = parts
        return partial

    def requests(self, digest: Digest, ranges: Ranges) -> list[tuple[bool, list[tuple[int, int]]]]:
        """``ranges`` of ``digest`` as replay requests, in their order: (as pieces, ranges).

        What lies in chunks covered whole is asked as chunks; each part of a
        partial chunk that a range reaches, as its piece (``piece``), once.
        """
        parts, indices = self._parts.get(digest, {}), self._indices.get(digest, [])
        step = self.chunk_size
        out: list[tuple[bool, list[tuple[int, int]]]] = []
        sent: set[tuple[int, int]] = set()

        def add(piece: bool, start: int, end: int) -> None:
            if out and out[-1][0] == piece:
                last = out[-1][1]
                at, length = last[-1]
                if at + length == start and not piece:
                    last[-1] = (at, end - at)
                else:
                    last.append((start, end - start))
            else:
                out.append((piece, [(start, end - start)]))

        for offset, length in ranges:
            if length <= 0 or offset < 0:
                continue
            at, end = offset, offset + length
            first = bisect.bisect_left(indices, offset // step)
            for index in indices[first : bisect.bisect_right(indices, (end - 1) // step)]:
                if at < index * step:
                    add(False, at, index * step)
                low, high = max(offset, index * step), min(end, (index + 1) * step)
                for part in parts[index]:
                    piece = self._piece[(digest, part)]
                    if part[0] < high and low < part[1] and piece not in sent:
                        sent.add(piece)
                        add(True, *piece)
                at = high
            if at < end:
                add(False, at, end)
        return out

    def split(self, digest: Digest, offset: int, length: int) -> list[Cut]:
        """A read of ``digest`` cut where it enters or leaves a partial chunk's parts, in
        order: (offset, length, the piece holding it, or None for a cut read as chunks).
        A cut inside one part of a partial chunk is its piece's; any other, chunks'."""
        parts = self._parts.get(digest)
        end = offset + length
        if not parts or length <= 0:
            return [(offset, length, None)]
        step = self.chunk_size
        out: list[Cut] = []
        for index in range(offset // step, (end - 1) // step + 1):
            low, high = max(offset, index * step), min(end, (index + 1) * step)
            part = holding(parts.get(index, []), low, high)
            piece = None if part is None else self._piece[(digest, part)]
            if out and out[-1][2] == piece and out[-1][0] + out[-1][1] == low:
                out[-1] = (out[-1][0], high - out[-1][0], piece)
            else:
                out.append((low, high - low, piece))
        return out

    def asks(
        self, digest: Digest, offset: int, length: int
    ) -> list[tuple[bool, list[tuple[int, int]]]]:
        """A prefetch of ``digest`` bytes [offset, offset + length) as ``requests`` gives a
        replay's: ``split``'s cuts, the pieces' together and the chunks' together."""
        cuts = self.split(digest, offset, length)
        pieces = sorted({(p[0], p[1] - p[0]) for _, _, p in cuts if p is not None})
        groups = [(False, [(o, n) for o, n, p in cuts if p is None]), (True, pieces)]
        return [(piece, ranges) for piece, ranges in groups if ranges]
