"""A mount's side of learned prefetch: record its image's first run, or replay it.

``start_trace(client, key)``, for a mount given a trace key
(``lazyfs.cache.remote.trace_key``: image digest and command), looks for
the key's trace in the cache directory, and among those fetched from the
image's registry (``lazyfs.index.trace.find_trace``; a damaged or hostile
one is ignored with one logged line, as if absent).

- Found: its ranges are sent to the daemon in trace order, one blob's run
  of them per request, from a thread of their own (the daemon may be
  starting beside the mount), as a replay (``lazyfs.cache.replay``):
  fetched in parallel with the mount's own reads and yielding to them.
  The process that starts a lazy mount sends the first ``SENT_AHEAD`` of
  those requests itself, before the mount process has loaded
  (``lazyfs.fs.mount_ahead``); that mount, told so (``sent``), sends only
  the rest, if any.
  Ranges of blobs this mount does not read remotely are left out; a range
  past its blob's end is cut there. The eStargz landmark prefetch is not
  asked for besides: the trace says better what this command reads.
- Not found: a ``Recorder`` watches every range the client reads (cached or
  not) and keeps those that read something new, a byte not read before (the
  replay fetches just those bytes: ``lazyfs.cache.partial``), in order,
  merging one that continues the last. Once the mount serves (``Recorder.serving``), it stops
  when the workload settles (no new range for ``SETTLE`` seconds), after
  ``MAX_RECORDING`` seconds, or at ``MAX_READS`` ranges, and keeps the
  trace in the cache (temporary file + rename); also when the mount ends
  first (``Recorder.finish``), marked ``cut`` then: whole for a job that
  ended, only the start of one stopped early. A mount that never served
  writes nothing.
  Reads of a thread marked ``unrecorded`` (a first start's read-ahead,
  ``lazyfs.fs.predict``) are not kept: the trace is what the program read,
  in its order, which such guesses, made in an order of their own, would
  otherwise stand in for (the program's later reads of the same bytes
  count as nothing new). A reader that keeps what such a thread fetched
  (``lazyfs.blobs.estargz_reader``, ``lazyfs.blobs.published_heard``) tells
  the watcher of it when a recorded thread first reads it there: the
  program's read, where it comes.
- Found, not ``final`` (cut, or with nothing of this mount's blobs):
  replayed as above, and recorded again as if not found; what this mount
  recorded replaces it, whole or cut, when it read ``FURTHER`` times the
  bytes at least (``lazyfs.index.trace.replaces``: its workload went
  further, the cut one was of a run stopped early), counted on the blobs
  this mount replays (``Replacing``), and keeps its reads of other
  layers. A short job's trace, cut every time, stays as it is; a stopped
  run's is replaced by the next run that goes on to the end, unless it
  had read more than four fifths of what that run reads.

A trace is only a hint: what its replay fetches is verified when read like
any chunk, so a wrong trace costs extra fetches, never wrong bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from lazyfs.index.trace import (
    MAX_RANGE,
    MAX_READS,
    Read,
    Sizes,
    Trace,
    TraceError,
    check_key,
    final,
    find_trace,
    replaces,
    store_trace,
)
from providers.digest import Digest
from providers.errors import LazyfsError
from providers.spans import SpanSet

log = logging.getLogger(__name__)

SETTLE = 2.0
MAX_RECORDING = 60.0
_RANGES_PER_REQUEST = 4096  # the daemon's bound on a prefetch's ranges
# The requests of a replay the process that starts a mount sends (``lazyfs.fs.mount_ahead``),
# while the mount process loads; each is a round trip to the daemon. The mount sends the rest.
SENT_AHEAD = 256
_quiet = threading.local()  # ``unrecorded``: set on threads whose reads no trace keeps


def unrecorded() -> None:
    """No trace keeps what the calling thread reads from now on (module docstring)."""
    _quiet.on = True


def recorded() -> bool:
    """Whether a trace keeps what the calling thread reads (it is not ``unrecorded``)."""
    return not getattr(_quiet, "on", False)


@runtime_checkable
class Watched(Protocol):
    """A blob source that tells a watcher what it reads (``CacheClient``): a reader that
    keeps what it read from it tells that watcher of what it serves from its own store."""

    watcher: ReadWatcher | None


class _Sized(Protocol):
    @property
    def size(self) -> int | None: ...


class ReadWatcher(Protocol):
    def read(self, digest: Digest, offset: int, length: int) -> None: ...


class TraceClient(Protocol):
    """What of the cache client a trace uses (``lazyfs.cache.client.CacheClient``)."""

    replaying: list[tuple[Digest, list[tuple[int, int]]]]  # a trace's ranges prefetched
    watcher: ReadWatcher | None

    @property
    def cache_dir(self) -> Path: ...

    @property
    def blobs(self) -> Mapping[Digest, _Sized]: ...

    def replay(self, digest: Digest, ranges: Sequence[tuple[int, int]]) -> int: ...


def start_trace(
    client: TraceClient, key: str, published: Path | None = None, *, sent: bool = False
) -> Recorder | None:
    """Replay the trace of ``key`` through ``client``, record it, or both; the Recorder when
    it records.

    The trace ``find_trace`` finds; recorded when there is none, or when it
    is not ``final``: cut, or with nothing of this mount's
    (``Recorder.replacing``). ``sent``: the process that started the mount
    has sent the first ``SENT_AHEAD`` requests (``lazyfs.fs.mount_ahead``);
    only the rest are sent here.
    """
    try:
        check_key(key)
    except TraceError as error:  # a key not of ``trace_key``'s making: nothing to trace by
        log.warning("no prefetch trace: %s", error)
        return None
    sizes = replayed_sizes(client)
    trace = find_trace(client.cache_dir, key, published, sizes)
    steps = [] if trace is None else replay_steps(trace, sizes)
    recorder = None
    if trace is None or not final(trace, sizes):
        replacing = None if trace is None else Replacing(trace, sizes)
        recorder = Recorder(client.cache_dir, key, replacing=replacing)
        client.watcher = recorder
    if trace is None:
        return recorder
    # Only a trace with something of this mount's to fetch stands in for
    # the landmark prefetch (one naming other layers would just lose it); a
    # published index's reader asks for the windows it needs (``Asks.replayed``).
    client.replaying = steps
    how = "" if recorder is None else " (recorded again)"
    log.info("replaying the trace of %s%s: %d ranges", key, how, sum(len(r) for _, r in steps))
    left = steps[SENT_AHEAD:] if sent else steps
    if left:
        threading.Thread(
            target=send_steps, args=(client, left), name="lazyfs-trace-replay", daemon=True
        ).start()
    return recorder


@dataclass(frozen=True)
class Replacing:
    """A trace that is not ``final`` which a mount replays and records again, and the blobs
    the mount reads remotely (``sizes``), on which ``lazyfs.index.trace.replaces`` counts
    both."""

    trace: Trace
    sizes: Sizes

    def stays(self, new: Trace) -> bool:
        """Whether the trace stays rather than ``new``."""
        return not replaces(new, self.trace, self.sizes)

    def keeping_others(self, new: Trace) -> Trace:
        """``new``, then the trace's reads of the layers this mount reads locally (adopted
        into the store since, or local here only), which it could not record: kept for the
        machines that read them remotely, up to ``MAX_READS`` in all."""
        room = MAX_READS - len(new.reads)
        others = [read for read in self.trace.reads if read.digest not in self.sizes][:room]
        return Trace(new.key, new.reads + tuple(others), new.cut)


def client_steps(client: TraceClient, trace: Trace) -> list[tuple[Digest, list[tuple[int, int]]]]:
    """``replay_steps`` of ``trace`` for the blobs ``client`` reads: what the mount process
    replays, and what the process that starts it sends the head of (``sent``).

    Not those it reads as pieces, the windows blobs of published indexes:
    the trace's ranges of them are replayed as the chunks around them,
    some seven times the windows' bytes, where the mount asks for just the
    windows its intervals need (``lazyfs.blobs.published_asks.Asks.replayed``).
    """
    return replay_steps(trace, replayed_sizes(client))


def replayed_sizes(client: TraceClient) -> Sizes:
    """The blobs ``client`` reads remotely, as a trace's replay and ``replaces`` count them:
    not the windows blobs, read as pieces (``client_steps``)."""
    return {d: blob.size for d, blob in client.blobs.items() if not getattr(blob, "piece", False)}


def replay_steps(
    trace: Trace, sizes: Mapping[Digest, int | None]
) -> list[tuple[Digest, list[tuple[int, int]]]]:
    """The trace's ranges as requests: runs of one blob's ranges, in trace order.

    Only blobs in ``sizes``; a range is cut at its blob's end (when known).
    """
    steps: list[tuple[Digest, list[tuple[int, int]]]] = []
    for read in trace.reads:
        if read.digest not in sizes:
            continue
        size = sizes[read.digest]
        length = read.length if size is None else min(read.length, size - read.offset)
        if length <= 0:
            continue
        if not steps or steps[-1][0] != read.digest or len(steps[-1][1]) >= _RANGES_PER_REQUEST:
            steps.append((read.digest, []))
        steps[-1][1].append((read.offset, length))
    return steps


def send_steps(
    client: TraceClient,
    steps: Sequence[tuple[Digest, list[tuple[int, int]]]],
    *,
    level: int = logging.WARNING,
) -> int:
    """Ask the daemon to replay ``steps`` (``replay_steps``), in order; chunks queued.
    The first refusal is logged (at ``level``) and ends it: a trace is only a hint."""
    queued = 0
    for digest, ranges in steps:
        try:
            queued += client.replay(digest, ranges)
        except LazyfsError as error:
            # Only a hint: the reads fetch what they need themselves.
            log.log(level, "trace replay stopped: %s", error)
            break
    return queued


class Recorder:
    """The ranges a mount reads, in order, until its workload settles (module docstring).

    Thread-safe: ``read`` is called from every reader's thread.
    """

    def __init__(
        self,
        cache_dir: Path,
        key: str,
        *,
        settle: float = SETTLE,
        limit: float = MAX_RECORDING,
        clock: Callable[[], float] = time.monotonic,
        replacing: Replacing | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.key = key
        self.replacing = replacing  # the trace replayed: kept unless this one replaces it
        self.settle = settle
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._reads: list[Read] = []
        self._seen: dict[Digest, SpanSet] = {}  # the bytes read, exactly
        self._last_new: float | None = None
        self._serving_since: float | None = None
        self._stopped = threading.Event()
        # Held while the trace is written: a second finish (the mount's end,
        # while the watcher writes) waits for the file rather than exit under it.
        self._writing = threading.Lock()

    def read(self, digest: Digest, offset: int, length: int) -> None:
        if self._stopped.is_set() or length <= 0 or not recorded():
            return
        with self._lock:
            seen = self._seen.setdefault(digest, SpanSet())
            if len(self._reads) >= MAX_READS or not seen.add(offset, offset + length):
                return
            self._last_new = self._clock()
            last = self._reads[-1] if self._reads else None
            if (
                last is not None
                and last.digest == digest
                and last.end == offset
                and last.length + length <= MAX_RANGE
            ):
                self._reads[-1] = Read(digest, last.offset, last.length + length)
            else:
                for start in range(offset, offset + length, MAX_RANGE):
                    piece = min(MAX_RANGE, offset + length - start)
                    self._reads.append(Read(digest, start, piece))

    def serving(self) -> None:
        """The mount serves now: the settle clock runs from here (a thread watches it)."""
        with self._lock:
            if self._serving_since is not None:
                return
            self._serving_since = self._clock()
        threading.Thread(target=self._watch, name="lazyfs-trace-record", daemon=True).start()

    def due(self) -> bool:
        """Whether recording is over: settled, past its time, or full."""
        with self._lock:
            since = self._serving_since
            if since is None:
                return False
            now = self._clock()
            if len(self._reads) >= MAX_READS or now - since >= self.limit:
                return True
            # Settled counts from the workload's last new read: until the
            # container reads anything (an agent may start it seconds after
            # the mount serves), only the time limit ends the recording.
            if self._last_new is None or self._last_new < since:
                return False
            return now - self._last_new >= self.settle

    def _watch(self) -> None:
        while not self._stopped.wait(min(self.settle, 0.5) / 2):
            if self.due():
                self.finish()

    def finish(self, *, mount_ended: bool = False) -> Path | None:
        """Stop recording and keep the trace (once; nothing if the mount never served,
        or read nothing). A failure to write is logged: a trace is only a hint.

        ``mount_ended``: the mount is going; unless recording was over anyway
        (``due``), the trace is kept ``cut`` (``lazyfs.index.trace``).
        Settled or cut, it is not kept when the trace it would replace
        (``replacing``) stays (``lazyfs.index.trace.replaces``); kept, it
        keeps that one's reads of other layers (``Replacing.keeping_others``)."""
        cut = mount_ended and not self.due()
        with self._writing:
            with self._lock:
                if self._stopped.is_set():
                    return None
                self._stopped.set()
                reads = tuple(self._reads)
                if self._serving_since is None or not reads:
                    return None
            trace = Trace(self.key, reads, cut)
            if self.replacing is not None:
                if self.replacing.stays(trace):
                    log.info("the trace of %s stays: this run read no further", self.key)
                    return None
                trace = self.replacing.keeping_others(trace)
            try:
                path = store_trace(self.cache_dir, trace)
            except (OSError, TraceError, LazyfsError) as error:
                log.warning("the trace of %s was not kept: %s", self.key, error)
                return None
        how = "cut: the mount ended first" if cut else "whole"
        log.info("kept the trace of %s (%s): %d ranges, in %s", self.key, how, len(reads), path)
        return path
