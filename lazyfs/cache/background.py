"""Background fetch: the rest of a mounted layer's blob, at low priority, then a verdict on it.

A mount asks for it once per remote layer (``Background`` in ``cache.proto``).
``Backgrounds.start`` runs one task per blob, in the daemon's nursery, and
answers at once. The task fetches the blob's missing chunks in blob order, a
run of adjacent chunks per request, and before each request waits until no
reader waits on a fetch and none has for ``settle`` seconds
(``Fetcher.quiet``): on-demand reads go first, the background only fills a
link that has gone idle. Its requests run under a limiter of their own (one
at a time), never taking a reader's place upstream, and are small (a few
chunks), so a read that comes while one is out shares the link with it
only briefly. Blobs are worked through one at a time, in the order they
were asked for.

Why wait for the link to settle rather than only for no reader waiting: a
container starting from a lazy mount reads in bursts (the mount's TOCs,
then the program's loader, libraries and modules, each miss a round trip
after the last), with gaps of CPU work between them. A background request
started in such a gap is still out when the next miss comes, and on a
shared link that miss then waits behind it. Holding off until no miss has
come for a while (the daemon's ``BACKGROUND_SETTLE``, ``lazyfs.cache.service``)
lets a container's start have the link to itself; the rest of the image
follows once it runs. The request for background fetch counts as such a
miss: a mount asks for it as soon as it has indexed a layer, and its
container's first reads are about to come.

When every chunk is in the cache the blob is read back from its chunk files
(pinned meanwhile), and its digest, size and, uncompressed, its diff_id
computed (``providers.diff_id.DiffIdChecker``, output bounded as pulls are,
for the size read). What the mounting image said of the layer decides
nothing here: the verdict (``lazyfs.cache.blobstate``) is on the bytes,
shared by every image. Bytes that hash to the digest are complete, with
the size and diff_id they have (quarantined, for everyone, only when they
do not unpack). Cached bytes that do not may have come from another origin
(chunks are keyed by digest alone, and any image may name a digest with its
own registry): the job's origin is asked for every byte anew, its answer
replacing the cached chunks. Only when those bytes fail too are they wrong
bytes from that origin, recorded against it and the size alone, and the
chunks dropped, so a mount reading the blob from another origin fetches
from its own. A chunk evicted before the check makes the task fetch again (a few
rounds at most: other blobs' pinned chunks may leave too little room, and
then the blob stays partial). A blob larger than the whole cache is not
fetched in the background at all: it stays partial, read on demand, rather
than evict every other image's chunks round after round for a verdict it
can never get.

A fetch that fails for good (not found, refused credentials, bytes that do
not verify) leaves the blob partial, the reason logged, for the next mount
to ask again. One that fails for now (no room on the cache's disk, or an
origin out of reach or overloaded: ``lazyfs.cache.origin_wait``) waits,
letting the next blob have its turn, and goes on by itself with the chunks
it kept, for some twenty rounds without progress (``room``): a container runs on
with nothing asking, so a registry's blip would leave its layer partial for
good, never adopted into the store (``lazyfs.provision.adopt``). Nothing
here is remembered across restarts but the verdicts.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import trio

from lazyfs.cache.blobstate import (
    COMPLETE,
    Verdict,
    forget_wrong,
    judge_cached,
    origin_name,
    read_verdict,
    verdicts,
    write_verdict,
    write_wrong,
)
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import Fetcher
from lazyfs.cache.layout import ChunkKey
from lazyfs.cache.origin_wait import OriginWaits, awaited_by, origin_key
from lazyfs.cache.room import ROOM_TRIES, ROOM_WAIT_FIRST, room_wait
from lazyfs.cache.values import WAITING, BlobInfo, BlobKind, Origin
from providers.digest import Digest, algorithm
from providers.errors import DigestMismatch, LazyfsError
from providers.source import BlobSource

log = logging.getLogger(__name__)

_ROUNDS = 3
# Upstream requests the background fetch has out at once.
REQUESTS = 1
_REQUEST_CHUNKS = 8


@dataclass
class _Job:
    digest: Digest
    size: int
    diff_id: Digest | None
    origin: Origin | None = None
    kind: BlobKind = BlobKind.FETCHING
    reason: str = ""
    most: int = 0  # the most of its bytes cached at a failure: a try past it got some


class Backgrounds:
    """The daemon's background fetches, over ``fetcher``'s cache, run in ``nursery``."""

    def __init__(
        self,
        fetcher: Fetcher,
        nursery: trio.Nursery,
        *,
        enabled: bool = True,
        settle: float = 0.0,
        wait_first: float = ROOM_WAIT_FIRST,
    ) -> None:
        """``settle``: seconds without a reader waiting before each background request;
        ``wait_first``: before the first try again of a fetch that failed for now."""
        self.fetcher = fetcher
        self.settle = settle
        self.wait_first = wait_first
        self.cache: DiskCache = fetcher.cache
        self.enabled = enabled
        self._nursery = nursery
        self._jobs: dict[Digest, _Job] = {}
        self._one_blob = trio.Lock()  # blobs one after another, in the order asked
        self._upstream = trio.CapacityLimiter(REQUESTS)
        self._origins = OriginWaits(wait_first)

    async def start(
        self,
        source: BlobSource,
        digest: Digest,
        size: int,
        diff_id: Digest | None,
        origin: Origin | None = None,
    ) -> BlobInfo:
        """Queue blob ``digest`` from ``origin`` unless it is done, queued, or background
        fetch is off. An origin found to serve wrong bytes is tried again (a new mount
        asks): its record stays, refusing reads through it, until a fetch verifies.
        """
        # A mount asks right after indexing its layer, just before its first
        # reads: they get the link first, as if one had just waited.
        self.fetcher.note_demand()
        # A file read and a walk of the cache's index: not in the thread
        # every mount's reads are answered in.
        done = await trio.to_thread.run_sync(self._judged, digest)
        if done is not None:
            return done
        job = self._jobs.get(digest)
        if job is not None and job.kind is BlobKind.FETCHING and job.origin == origin:
            return self.info(digest)
        if not self.enabled:
            return await trio.to_thread.run_sync(self.info, digest)
        job = self._jobs[digest] = _Job(digest, size, diff_id, origin)
        if not self.cache.holds_whole(size):
            # Fetched whole, it would only evict itself and every other image's
            # chunks, round after round, and never be judged: reads stay lazy.
            job.kind = BlobKind.PARTIAL
            job.reason = (
                f"larger than the cache ({size} bytes; the limit is {self.cache.limit_bytes})"
            )
            log.warning("no background fetch of %s: %s", digest, job.reason)
            return self.info(digest)
        self._nursery.start_soon(self._run, source, job)
        return self.info(digest)

    def _judged(self, digest: Digest) -> BlobInfo | None:
        """The blob's state when a verdict stands on it (and it was not evicted since)."""
        verdict = read_verdict(self.cache.layout.root, digest)
        if verdict is not None and not self._evicted_since(verdict):
            return self._info_of_verdict(verdict)
        return None

    def info(self, digest: Digest, cached: int | None = None) -> BlobInfo:
        if cached is None:
            cached = self.cache.blob_usage().get(digest, 0)
        job = self._jobs.get(digest)
        if job is not None and job.kind is BlobKind.FETCHING:
            # Until its records are written and its chunks dropped, whatever is on disk.
            return BlobInfo(digest, job.kind, job.size, cached, job.reason)
        verdict = read_verdict(self.cache.layout.root, digest)
        if verdict is not None:
            return self._info_of_verdict(verdict, cached)
        if job is None:
            size = self.cache.blob_size(digest) or 0
            return BlobInfo(digest, BlobKind.UNKNOWN, size, cached)
        return BlobInfo(digest, job.kind, job.size, cached, job.reason)

    def infos(self) -> list[BlobInfo]:
        """Every blob with chunks cached, a background job or a verdict, by digest."""
        usage, root = self.cache.blob_usage(), self.cache.layout.root
        digests = set(usage) | set(self._jobs) | {v.digest for v in verdicts(root)}
        return [self.info(d, usage.get(d, 0)) for d in sorted(digests)]

    def forget(self, digest: Digest) -> None:  # its layer was removed: a run of it stops
        self._jobs.pop(digest, None)

    def _evicted_since(self, verdict: Verdict) -> bool:
        """Whether a complete blob lost chunks to eviction since: then it is fetched again."""
        if verdict.state != COMPLETE:
            return False
        return self.cache.blob_usage().get(verdict.digest, 0) < verdict.size

    def _info_of_verdict(self, verdict: Verdict, cached: int | None = None) -> BlobInfo:
        if cached is None:
            cached = self.cache.blob_usage().get(verdict.digest, 0)
        kind = BlobKind.COMPLETE if verdict.state == COMPLETE else BlobKind.QUARANTINED
        if kind is BlobKind.COMPLETE and cached < verdict.size:
            job = self._jobs.get(verdict.digest)
            # Verified once, partly evicted since: partial until fetched again.
            fetching = job is not None and job.kind is BlobKind.FETCHING
            kind = BlobKind.FETCHING if fetching else BlobKind.PARTIAL
        return BlobInfo(verdict.digest, kind, verdict.size, cached, verdict.reason)

    async def _run(self, source: BlobSource, job: _Job) -> None:
        """Fetch, check and judge one blob, waiting (not holding the turn of other blobs)
        while the disk has no room or the origin fails for now; never raises but Cancelled."""
        origin = self._origins.turn(origin_key(job.origin, source))
        room_tries = 0
        while self._jobs.get(job.digest) is job:  # else a mount asked for it from another origin
            tries = room_tries + origin.in_row  # its origin's failures in a row are its tries
            if down := origin.down:
                if tries > ROOM_TRIES:  # as many as it would have made alone
                    job.kind, job.reason = BlobKind.PARTIAL, str(down)
                    log.warning("background fetch of %s stopped: %s", job.digest, down)
                    return
                job.reason = f"{WAITING}its origin: {down}"
                await origin.wait()
                continue
            async with self._one_blob:
                verdict = read_verdict(self.cache.layout.root, job.digest)
                if verdict is not None and not self._evicted_since(verdict):
                    # Judged by a job from another origin meanwhile.
                    complete = verdict.state == COMPLETE
                    job.kind = BlobKind.COMPLETE if complete else BlobKind.QUARANTINED
                    job.reason = verdict.reason
                    return
                if origin.down:
                    continue  # failed another blob's fetch while this one waited its turn
                job.reason = ""
                try:
                    # Not fetched while the disk cannot hold it whole: each round would
                    # evict every other image's chunks, then its own, and start again.
                    if short := self.cache.no_disk_room_for(job.size):
                        raise OSError(errno.ENOSPC, short)
                    await self._fetch_and_judge(source, job)
                    origin.tried(None)
                    return
                except (LazyfsError, OSError) as error:
                    # Bytes it never had before came: the origin answered (what eviction
                    # took since and came again is no progress: counted as a failure).
                    cached = self.cache.blob_usage().get(job.digest, 0)
                    had, job.most = job.most, max(job.most, cached)
                    wait = origin.tried(error, job.most > had)
                    if wait is None:  # not a failure of its origin's: no room, or for good
                        wait, room_tries = room_wait(tries, self.wait_first), room_tries + 1
                    tries = room_tries + origin.in_row  # this failure counted
                    awaited = awaited_by(error)
                    if awaited is None or tries > ROOM_TRIES:
                        job.kind, job.reason = BlobKind.PARTIAL, str(error)
                        log.warning("background fetch of %s stopped: %s", job.digest, error)
                        return
                    job.reason = f"{WAITING}{awaited}: {error}"
                    log.warning("background fetch of %s %s; again in %g s (%d of %d)",
                                job.digest, job.reason, wait, tries, ROOM_TRIES)  # fmt: skip
            await trio.sleep(wait)  # the origin's next try, for one that failed for now

    async def _fetch_and_judge(self, source: BlobSource, job: _Job) -> None:
        chunk_size = self.cache.layout.chunk_size
        count = -(-job.size // chunk_size)
        asked_anew = False  # whether every byte was asked of the job's origin anew
        for _ in range(_ROUNDS + 1):
            # Each chunk is asked for at most once a round: a cache smaller
            # than the blob evicts its first chunks while the last come in.
            at = 0
            while run := self._next_run(job.digest, at, count):
                await self.fetcher.quiet(self.settle)
                await self.fetcher.fetch_chunks(source, job.digest, run, self._upstream)
                at = run[-1] + 1
            keys = [ChunkKey(job.digest, i) for i in range(count)]
            with self.cache.pinned(keys):
                if self._next_run(job.digest, 0, count):
                    continue  # evicted before it was pinned: fetch it again
                found = await trio.to_thread.run_sync(
                    judge_cached, self.cache, job.digest, job.size
                )
            if isinstance(found, str) and not asked_anew:
                asked_anew = True
                wrong = await self._origin_mismatch(source, job)
                if wrong is None:
                    continue  # the origin's bytes are good: check them in the cache
                found = wrong
            elif isinstance(found, str):
                # Its origin served good bytes, yet the cache holds others again.
                await self._drop(job)
                job.kind = BlobKind.PARTIAL
                job.reason = "chunks from another origin replaced the ones verified"
                log.warning("background fetch of %s: %s", job.digest, job.reason)
                return
            await self._judge(job, found)
            return
        job.kind = BlobKind.PARTIAL
        job.reason = "the cache cannot hold the blob whole"
        log.warning("background fetch of %s: %s", job.digest, job.reason)

    def _next_run(self, digest: Digest, at: int, count: int) -> list[int]:
        """The first run of uncached chunks from chunk ``at`` on, up to a request's worth.

        Chunks a reader's fetch is bringing count as uncached: fetching
        them waits for that fetch rather than asking again.
        """
        run: list[int] = []
        for index in range(at, count):
            if self.cache.contains(ChunkKey(digest, index)):
                if run:
                    break
                continue
            run.append(index)
            if len(run) == _REQUEST_CHUNKS:
                break
        return run

    async def _origin_mismatch(self, source: BlobSource, job: _Job) -> str | None:
        """Why the blob as ``job.origin`` serves it is not ``job.digest``, every byte asked anew.

        The cached bytes failed, but a chunk there may have come from
        another origin (a reader's fetch through an image naming this digest
        with its own registry): only bytes that all came from the job's
        origin may be held against it. What it serves replaces the cached
        chunks, so that bytes found good are what the next check reads.
        """
        chunk_size = self.cache.layout.chunk_size
        step = chunk_size * _REQUEST_CHUNKS
        # Whole chunks, as the check of the cache reads them: a short one
        # would say the blob ends there.
        end = -(-job.size // chunk_size) * chunk_size
        hasher = hashlib.new(algorithm(job.digest))
        for offset in range(0, end, step):
            await self.fetcher.quiet(self.settle)
            length = min(step, end - offset)
            data = await trio.to_thread.run_sync(
                source.read_range, job.digest, offset, length, limiter=self._upstream
            )
            data = data[:length]  # what was asked, however much came
            await trio.to_thread.run_sync(self._replace, job.digest, offset, data, hasher)
            if len(data) < length:
                break  # the blob ends early: the digest decides
        actual = Digest(f"{algorithm(job.digest)}:{hasher.hexdigest()}")
        if actual == job.digest:
            return None
        return str(DigestMismatch(f"layer {job.digest}", expected=job.digest, actual=actual))

    def _replace(self, digest: Digest, offset: int, data: bytes, hasher: Any) -> None:
        """Blocking: hash ``data``, and put it in the cache over whatever is there."""
        hasher.update(data)
        chunk_size = self.cache.layout.chunk_size
        for start in range(0, len(data), chunk_size):
            key = ChunkKey(digest, (offset + start) // chunk_size)
            self.cache.put(key, data[start : start + chunk_size], replace=True)

    async def _judge(self, job: _Job, found: Verdict | str) -> None:
        # The records are fsynced: written in a worker thread, not the one
        # every mount's reads are answered in. The job reads as fetching
        # until they are written and the chunks dropped.
        root = self.cache.layout.root
        if isinstance(found, Verdict):
            await trio.to_thread.run_sync(write_verdict, root, found)
            await trio.to_thread.run_sync(forget_wrong, root, job.digest, job.origin, job.size)
            if found.state == COMPLETE:
                job.kind = BlobKind.COMPLETE
                log.info("layer %s is complete and verified (%d bytes, diff_id %s)",
                         job.digest, found.size, found.diff_id)  # fmt: skip
                return
            await self._drop(job)
            job.kind, job.reason = BlobKind.QUARANTINED, found.reason
            log.error("layer %s quarantined: its bytes do not unpack: %s", job.digest, found.reason)
        else:
            # Says nothing of the blob: only of what this origin served.
            origin = origin_name(job.origin)
            reason = f"{origin} served wrong bytes: {found}"
            await trio.to_thread.run_sync(
                write_wrong, root, job.digest, job.origin, job.size, reason
            )
            await self._drop(job)
            job.kind, job.reason = BlobKind.QUARANTINED, reason
            log.error("layer %s: not read from %s any more: %s", job.digest, origin, found)

    async def _drop(self, job: _Job) -> None:
        """Drop the blob's chunks. In the trio thread on purpose: a reader builds its
        answer from pinned chunks without a checkpoint (``Fetcher._answer``), so a drop
        here can never fall between its lookup and its read; one in a worker thread could.
        """
        for index in range(-(-job.size // self.cache.layout.chunk_size)):
            self.cache.drop(ChunkKey(job.digest, index))
            if index % _REQUEST_CHUNKS == _REQUEST_CHUNKS - 1:
                await trio.lowlevel.checkpoint()  # let reads in between a long blob's unlinks
