"""Which range requests a read needs: missing chunks, merged, with a read-ahead. Pure, no I/O.

``plan`` takes the chunks a read wants (and those to read ahead) and what is
cached or already being fetched, and returns the requests to make: each a run
of adjacent missing chunks of one blob, at most ``max_request_chunks`` long,
so one slow request never holds more than that and the requests of one read
can run side by side.

Read-ahead chunks never share a request with chunks a reader waits for: a
``BlobSource.read_range`` answers all at once, so a merged request would make
the reader wait for bytes nobody asked for yet.

``Readahead`` is the sequential-read detector, one per blob, fed the chunks
of each read the daemon sees. The daemon sees misses only (mounts read cached
chunks themselves), so "sequential" means: this read starts after the last
one's first chunk and no further than the end of what was fetched for it,
read-ahead included. Then the window doubles, from ``min_window`` up to
``max_window`` chunks, as the kernel's read-ahead does; any other read resets
it to none. A read starting where the previous one started (another mount
reading the same file) changes nothing.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass

from lazyfs.cache.layout import chunk_indices


@dataclass(frozen=True)
class Fetch:
    """One range request: chunks [first, first + count) of a blob; ``ahead`` when nobody waits."""

    first: int
    count: int
    ahead: bool = False

    @property
    def chunks(self) -> range:
        return range(self.first, self.first + self.count)

    def span(self, chunk_size: int) -> tuple[int, int]:
        """The request as blob bytes (offset, length)."""
        return self.first * chunk_size, self.count * chunk_size


def wanted_chunks(
    ranges: Iterable[tuple[int, int]], chunk_size: int, blob_size: int | None = None
) -> list[int]:
    """The chunks holding the byte ranges (offset, length), sorted, each once.

    With ``blob_size`` known, ranges are clamped to it: no chunk past the
    blob's end is wanted.
    """
    found: set[int] = set()
    for offset, length in ranges:
        if blob_size is not None:
            length = max(0, min(length, blob_size - offset))
        found.update(chunk_indices(offset, length, chunk_size))
    return sorted(found)


def plan(
    wanted: Iterable[int],
    have: Container[int],
    *,
    ahead: Iterable[int] = (),
    max_request_chunks: int = 8,
    last_chunk: int | None = None,
) -> list[Fetch]:
    """The requests that fetch every chunk of ``wanted`` and ``ahead`` not in ``have``.

    ``have`` holds the chunks cached or being fetched. Chunks past
    ``last_chunk`` (the blob's last, when its size is known) are never asked
    for. Demand requests come first, in blob order, then read-ahead ones.
    """
    if max_request_chunks < 1:
        raise ValueError(f"max_request_chunks {max_request_chunks} is below 1")

    def missing(indices: Iterable[int]) -> list[int]:
        return sorted(
            {
                i
                for i in indices
                if i >= 0 and (last_chunk is None or i <= last_chunk) and i not in have
            }
        )

    demand = missing(wanted)
    taken = set(demand)
    extra = [i for i in missing(ahead) if i not in taken]
    return [
        *_runs(demand, max_request_chunks, ahead=False),
        *_runs(extra, max_request_chunks, ahead=True),
    ]


def _runs(indices: list[int], limit: int, *, ahead: bool) -> list[Fetch]:
    fetches: list[Fetch] = []
    for index in indices:
        last = fetches[-1] if fetches else None
        if last is not None and last.first + last.count == index and last.count < limit:
            fetches[-1] = Fetch(last.first, last.count + 1, ahead)
        else:
            fetches.append(Fetch(index, 1, ahead))
    return fetches


@dataclass(frozen=True)
class Readahead:
    """What the detector remembers of a blob's last read, in chunks."""

    first: int  # the last read's first chunk
    last: int  # and its last
    fetched_to: int  # the first chunk after it and its read-ahead
    window: int  # the read-ahead given to it


def advance(
    state: Readahead | None,
    first: int,
    last: int,
    *,
    min_window: int = 2,
    max_window: int = 16,
) -> tuple[Readahead | None, range]:
    """Feed a read of chunks [first, last]; returns the next state and the chunks to read ahead."""
    if last < first:
        return state, range(0)
    if state is not None and first == state.first:
        return state, range(0)
    sequential = state is not None and state.first < first <= state.fetched_to
    if sequential and state is not None:
        window = min(max(2 * state.window, min_window), max_window)
    else:
        window = 0
    ahead = range(last + 1, last + 1 + window)
    return Readahead(first, last, max(ahead.stop, last + 1), window), ahead
