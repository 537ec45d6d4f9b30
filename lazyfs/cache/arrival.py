"""Cutting an upstream answer into cache chunks as its bytes arrive.

A fetch asks one range for several chunks at once (``lazyfs.cache.planner``):
a program's binary read ahead is some fifty of them in one request. Read
whole before it was cut, its first chunk waited on its last: a reader of
the first page waited on the transfer of the whole range, through the
shaped link of the cold-start bench about 300 ms. ``cut`` reads the answer
as ``providers.source.stream_range`` gives it and hands each chunk on as
soon as its last byte is in, so it lands (``lazyfs.cache.flight``) while the
rest is on its way. ``arrive`` runs it for the daemon's fetcher: ``cut`` in
an upstream thread, each chunk's put a trio task as the chunk comes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import trio

from providers.digest import Digest
from providers.errors import BadImage
from providers.source import BlobSource, stream_range


def cut(
    source: BlobSource,
    digest: Digest,
    offset: int,
    length: int,
    chunk_size: int,
    deliver: Callable[[int, bytes], None],
    stopped: Callable[[], bool] = lambda: False,
) -> int:
    """Fetch blob bytes ``[offset, offset + length)``; ``deliver(index, bytes)`` each chunk.

    Blocking: run in an upstream thread. The range is a fetch's span: whole
    chunks from a chunk's first byte (ValueError else), so every chunk is
    handed on whole, in order, but the last one of a blob that ends in the
    range. Returns how many bytes of the range came: fewer than ``length``
    only where the blob ends. ``stopped()`` turning true ends the transfer
    before the next piece and raises ``Stopped``: a short count would read
    as the blob's end. Bytes an answer carries outside the range (a
    whole-blob answer) are dropped. Raises what the source raises, after
    handing on the chunks that came whole; BadImage for an answer that
    skips bytes of the range.
    """
    if offset % chunk_size or length % chunk_size:
        raise ValueError(f"{offset}+{length} is not a run of whole {chunk_size}-byte chunks")
    end = offset + length
    at = offset  # the next byte of the range wanted
    pending = bytearray()  # the range's bytes from the start of chunk ``at // chunk_size``
    pieces: Iterator[tuple[int, bytes]] = stream_range(source, digest, offset, length)
    try:
        for start, data in pieces:
            if stopped():
                raise Stopped(f"the fetch of {digest} {offset}+{length} was stopped at {at}")
            if start + len(data) <= at:
                continue  # before the range, or of a whole-blob answer: not wanted
            if start > at:
                raise BadImage(f"blob {digest}: the answer for {offset}+{length} skipped"
                               f" bytes {at} to {start}")  # fmt: skip
            taken = data[at - start : end - start]
            pending += taken
            at += len(taken)
            while len(pending) >= chunk_size:
                deliver((at - len(pending)) // chunk_size, bytes(pending[:chunk_size]))
                del pending[:chunk_size]
            if at >= end:
                break  # the rest of a whole-blob answer is not wanted here
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # ends the transfer of what is left
    if stopped():
        raise Stopped(f"the fetch of {digest} {offset}+{length} was stopped at {at}")
    if pending:
        deliver((at - len(pending)) // chunk_size, bytes(pending))
    return at - offset


class Stopped(Exception):
    """A ``cut`` whose caller stopped waiting for it (``arrive``, cancelled)."""


async def arrive(
    run: Callable[..., Awaitable[int]],
    limiter: trio.CapacityLimiter,
    source: BlobSource,
    digest: Digest,
    offset: int,
    length: int,
    chunk_size: int,
    put: Callable[[int, bytes], Awaitable[None]],
) -> int:
    """``cut`` under ``limiter`` through ``run``, with ``put(index, bytes)`` started for each
    chunk as it comes; returns once every put has ended, with ``cut``'s count.

    ``run``: ``trio.to_thread.run_sync``, or the fetcher's own threads'
    (``lazyfs.cache.workers.Workers.run_sync``). Both tell trio they are done
    through ``TrioToken.run_sync_soon``, as ``cut``'s chunks are handed on,
    and such callbacks run in order: every chunk is in a put before ``run``
    returns.

    What the upstream raises is raised after the puts of the chunks that
    came whole before it. Cancelled (the daemon stopping), a call on the
    fetcher's own threads is no longer waited for: the thread stops at its
    next piece and what it still hands on is dropped. On trio's threads
    (tests) the call is waited for, as ever.
    """
    token = trio.lowlevel.current_trio_token()
    async with trio.open_nursery() as puts:
        taking = True  # until this task stops waiting on the thread

        def arrived(index: int, piece: bytes) -> None:  # in trio's thread
            if taking:
                puts.start_soon(put, index, piece)

        def deliver(index: int, piece: bytes) -> None:  # in the upstream thread
            token.run_sync_soon(arrived, index, piece)  # in order, and before run() returns

        def stopped() -> bool:
            return not taking

        try:
            async with limiter:
                got = await run(cut, source, digest, offset, length, chunk_size, deliver, stopped)
        except Exception as failure:
            broke: Exception | None = failure
        else:
            broke = None
        finally:
            taking = False
    if broke is not None:
        raise broke
    return got
