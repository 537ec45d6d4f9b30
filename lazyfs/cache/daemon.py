"""The cache daemon's server: ``cache.proto`` over a Unix socket in the cache directory.

``serve`` listens on ``CACHE_DIR/daemon.sock`` (the cache directory is the
daemon's: it holds the cache's lock, so a socket file found there is stale and
replaced) and answers every connection's requests, each in a task of its own,
so a slow miss never holds up a status request or a hit behind it. Answers
go back in the order they are ready, named by request id.

A frame that cannot be read, or a payload without a readable request id,
ends the connection: the stream is out of step. A request that can be read but
not served is answered with an error (``messages.Failure``) and the
connection goes on. When a mount disconnects, its pending requests are
dropped; the fetches they started go on for everyone else.

A forget (``ForgetRequest``: the layers of those blobs were removed) drops
their pieces, their chunks but those pinned or being read (``DiskCache.release``)
and a complete verdict, and has the cache refuse their chunks until a read,
prefetch or background request names the blob again: a fetch of one under way
stops at its next chunk rather than bring the blob back.

``resolve`` turns a request's origin into the BlobSource to fetch from: the
registry client for a registry origin, whatever the caller configured for a
handle (``lazyfs.cache.upstream.Origins``). It raises BadRequest (or
NotFound) for an origin it does not know. A source that takes size hints
(``SizeHints``) gets the blob size a read names before the fetch.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket as stdlib_socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import trio

from lazyfs.cache import values
from lazyfs.cache.background import REQUESTS as BACKGROUND_REQUESTS
from lazyfs.cache.background import Backgrounds
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import DEFAULT_UPSTREAM_REQUESTS, Fetcher
from lazyfs.cache.forget_serve import let_go, listed
from lazyfs.cache.framing import FrameDecoder, ProtocolError, encode_frame
from lazyfs.cache.idle import Idle, stop_when_idle
from lazyfs.cache.layout import SOCKET_NAME, ChunkKey, socket_path
from lazyfs.cache.messages import (
    MAX_READ_LENGTH,
    Background,
    BackgroundOk,
    BadRequest,
    BlobRange,
    Evict,
    EvictOk,
    Failure,
    FailureKind,
    Forget,
    ForgetOk,
    Origin,
    Prefetch,
    PrefetchOk,
    Read,
    ReadOk,
    Request,
    Response,
    Status,
    StatusOk,
    decode_request,
    encode_response,
    failure_kind,
)
from lazyfs.cache.pieces import MAX_PIECE, MAX_PIECES_ASKED, Pieces
from lazyfs.cache.planner import wanted_chunks
from lazyfs.cache.replay import REQUESTS as REPLAY_REQUESTS
from lazyfs.cache.replay import Replays
from lazyfs.cache.workers import Workers
from providers.digest import Digest
from providers.source import BlobSource
from providers.unix_address import unix_address

log = logging.getLogger(__name__)

# Requests of one connection being served at once; past it the connection is
# not read until one finishes, so a flooding mount slows only itself.
MAX_REQUESTS_PER_CONNECTION = 256
# Threads for upstream requests: one for each request the readers, the trace
# replays and the background fetch may have out at once, so none of them waits
# for a thread behind another's request.
UPSTREAM_THREADS = DEFAULT_UPSTREAM_REQUESTS + REPLAY_REQUESTS + BACKGROUND_REQUESTS
_RECEIVE = 1 << 16

Resolve = Callable[[Origin], BlobSource]

__all__ = ["SOCKET_NAME", "Resolve", "Server", "SizeHints", "serve", "socket_path"]


@runtime_checkable
class SizeHints(Protocol):
    def note_size(self, digest: Digest, size: int) -> None:
        """Remember that blob ``digest`` has ``size`` bytes. Cheap: called from trio, no I/O."""
        ...


async def serve(
    cache: DiskCache,
    resolve: Resolve,
    *,
    background: bool = True,
    background_settle: float = 0.0,
    idle: Idle | None = None,
    on_server: Callable[[Server], None] | None = None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the cache until cancelled; ``task_status.started`` gets the socket's path.

    ``background``: whether background fetch requests are carried out
    (``lazyfs.cache.background``); when not, they are answered and ignored.
    ``background_settle``: how long no reader may have waited on a fetch
    before a background request goes out. ``idle``: when to stop with nothing to do
    (``lazyfs.cache.idle``); then it returns. ``on_server``: given the Server before it serves.
    """
    path = socket_path(cache.layout.root)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        with unix_address(path, "--cache_dir") as address:  # a deep one by a short path
            await sock.bind(address)
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    # Threads of their own for upstream requests: their connections stay open.
    upstream = Workers(UPSTREAM_THREADS)
    try:
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(DEFAULT_UPSTREAM_REQUESTS)  # the readers' requests
            fetcher = Fetcher(cache, nursery, limiter=limiter, upstream=upstream)
            backgrounds = Backgrounds(
                fetcher, nursery, enabled=background, settle=background_settle
            )
            pieces = Pieces(nursery, limiter, upstream.run_sync, demand=fetcher.demand)
            replays = Replays(fetcher, nursery, pieces)
            server = Server(cache, fetcher, resolve, backgrounds, replays, pieces)
            if on_server is not None:
                on_server(server)
            if idle is not None:
                nursery.start_soon(stop_when_idle, idle, server, nursery, nursery.cancel_scope)
            task_status.started(path)
            await trio.serve_listeners(server.connection, [listener])
    finally:
        upstream.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class Server:
    """The message handling of the daemon, one ``connection`` call per mount connected."""

    def __init__(
        self,
        cache: DiskCache,
        fetcher: Fetcher,
        resolve: Resolve,
        backgrounds: Backgrounds | None = None,
        replays: Replays | None = None,
        pieces: Pieces | None = None,
    ) -> None:
        self.cache = cache
        self.fetcher = fetcher
        self.pieces = pieces  # None: pieces are read as chunks
        self.resolve = resolve
        self.backgrounds = backgrounds
        self.replays = replays
        self.reads = 0  # read requests received: what a mount could not serve itself
        self.connected = 0  # connections open now
        self.using = 0  # of those, the ones that asked more than the status
        self.last_active = -math.inf  # trio time one last opened or closed
        self.last_used = -math.inf  # trio time the last of ``using`` ended

    async def connection(self, stream: trio.abc.Stream) -> None:
        """Serve one connection's requests until it ends (or goes out of step)."""
        self.connected += 1
        self.last_active = trio.current_time()
        used = [False]  # whether it asked more than the status: then ``using`` counts it
        try:
            await self._connection(stream, used)
        finally:
            self.connected -= 1
            self.last_active = trio.current_time()
            if used[0]:
                self.using -= 1
                self.last_used = self.last_active  # used until now

    async def _connection(self, stream: trio.abc.Stream, used: list[bool]) -> None:
        sending = trio.Lock()  # one writer at a time: frames must not interleave
        slots = trio.Semaphore(MAX_REQUESTS_PER_CONNECTION)

        async def send(response: Response) -> None:
            try:
                frame = encode_frame(encode_response(response))
            except Exception as error:
                # Never out of this task: it would end the daemon, every mount's.
                log.error("cache request %d: its answer cannot be sent: %r", response.id, error)
                failed = Failure(response.id, FailureKind.FAILED, "the answer could not be sent")
                frame = encode_frame(encode_response(failed))
            async with sending:
                # The mount may be gone: then nobody wants the answer.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(frame)

        async def answer(request: Request) -> None:
            try:
                await send(await self.respond(request))
            finally:
                slots.release()

        async with stream, trio.open_nursery() as requests:
            decoder = FrameDecoder()
            try:
                while True:
                    try:
                        data = await stream.receive_some(_RECEIVE)
                    except trio.BrokenResourceError:
                        break
                    if not data:
                        decoder.eof()
                        break
                    for payload in decoder.feed(data):
                        try:
                            request = decode_request(payload)
                        except BadRequest as error:
                            if error.request_id is None:
                                raise
                            await send(
                                Failure(error.request_id, FailureKind.BAD_REQUEST, str(error))
                            )
                            continue
                        if not (used[0] or isinstance(request, Status)):
                            used[0] = True
                            self.using += 1
                        await slots.acquire()
                        requests.start_soon(answer, request)
            except ProtocolError as error:
                log.warning("dropping a cache client: %s", error)
            # The mount is gone or out of step: its answers have nobody to go to.
            requests.cancel_scope.cancel()

    async def respond(self, request: Request) -> Response:
        """The response to ``request``, a forget too; failures are answers, never raised."""
        if not isinstance(request, Forget):
            return await self.answer(request)
        try:
            return await self.forget(request)
        except Exception as error:  # an unlink's, say
            return _failed(request.id, error)

    async def answer(self, request: values.Request) -> values.Response:
        """The response to ``request``; failures are answers too, never raised."""
        try:
            if isinstance(request, Read):
                self.reads += 1
                source = self.resolve(request.origin)
                blob = request.range
                self.cache.want(blob.digest)
                if request.blob_size is not None and isinstance(source, SizeHints):
                    source.note_size(blob.digest, request.blob_size)
                if self._as_piece(request.piece, blob, request.blob_size, own=request.own):
                    assert self.pieces is not None
                    data = await self.pieces.read(source, blob.digest, blob.offset, blob.length)
                    return ReadOk(request.id, (), data)
                if request.own:  # never from the chunks: they are every origin's
                    raise BadRequest(f"a read again of {blob.length} bytes: 1 to {MAX_PIECE}")
                extents = await self.fetcher.read_extents(
                    source,
                    blob.digest,
                    blob.offset,
                    blob.length,
                    request.blob_size,
                    readahead=not request.exact,
                )
                return ReadOk(request.id, tuple(extents))
            if isinstance(request, Prefetch):
                source = self._source(request.origin, request.ranges, request.blob_size)
                for wanted in request.ranges:
                    self.cache.want(wanted.digest)
                if request.replay and self.replays is not None:
                    # One add per blob's run of ranges: a trace repeating a
                    # range is weighed once, not once per copy.
                    queued = sum(
                        self.replays.add(source, digest, [(r.offset, r.length) for r in run],
                                         request.blob_size, piece=request.piece)
                        for digest, run in itertools.groupby(request.ranges, lambda r: r.digest)
                    )  # fmt: skip
                    return PrefetchOk(request.id, queued)
                # One request per range: a landmark's files arrive in one go.
                whole = MAX_READ_LENGTH // self.cache.layout.chunk_size
                queued = sum(
                    self.pieces.prefetch(source, r.digest, r.offset, r.length)
                    if self.pieces is not None and len(request.ranges) <= MAX_PIECES_ASKED
                    and self._as_piece(request.piece, r, request.blob_size)
                    else self.fetcher.prefetch(
                        source, r.digest, [(r.offset, r.length)], request.blob_size,
                        max_request_chunks=whole,
                    )
                    for r in request.ranges
                )  # fmt: skip
                return PrefetchOk(request.id, queued)
            if isinstance(request, Evict):
                blob = request.range
                dropped = self.fetcher.evict(blob.digest, blob.offset, blob.length)
                if self.pieces is not None:
                    dropped += self.pieces.evict(blob.digest, blob.offset, blob.length)
                why = request.reason or "no reason given"
                log.warning("evicted %d chunks or pieces of %s bytes %d+%d: %s", dropped,
                            blob.digest, blob.offset, blob.length, why)  # fmt: skip
                return EvictOk(request.id, dropped)
            if isinstance(request, Background):
                if self.backgrounds is None:
                    raise BadRequest("this cache daemon does no background fetch")
                source = self.resolve(request.origin)
                self.cache.want(request.digest)
                if isinstance(source, SizeHints):
                    source.note_size(request.digest, request.blob_size)
                state = await self.backgrounds.start(
                    source, request.digest, request.blob_size, request.diff_id, request.origin
                )
                return BackgroundOk(request.id, state)
            stats = self.cache.stats()
            return StatusOk(
                request.id,
                stats.used_bytes,
                stats.limit_bytes,
                stats.chunks,
                stats.pinned_chunks,
                self.fetcher.fetches_in_flight + (self.pieces.in_flight if self.pieces else 0),
                stats.chunk_size,
                self.reads,
                self.fetcher.fetches_started + (self.pieces.fetches if self.pieces else 0),
                self.fetcher.fetched_bytes + (self.pieces.fetched_bytes if self.pieces else 0),
                listed(self.cache, self.backgrounds),
                self.backgrounds is not None and self.backgrounds.enabled,
                self.fetcher.waits,
            )
        except Exception as error:
            return _failed(request.id, error)

    async def forget(self, request: Forget) -> ForgetOk:
        """Let go of the blobs ``request`` names: their layers were removed."""
        return await let_go(self.cache, self.pieces, self.backgrounds, request)

    def _as_piece(
        self, piece: bool, blob: BlobRange, blob_size: int | None, *, own: bool = False
    ) -> bool:
        """Whether a range asked as a piece is fetched as one: short enough, and its chunks
        neither all cached nor all in flight (an earlier lazyfs's trace replay brought windows
        as chunks; one still in a replay queue is not in flight, and is fetched twice).
        Bytes found wrong (``own``) are, whatever the chunks: those may be another origin's."""
        if not (piece or own) or self.pieces is None or not 0 < blob.length <= MAX_PIECE:
            return False
        if own:
            return True
        size = self.cache.layout.chunk_size
        chunks = wanted_chunks([(blob.offset, blob.length)], size, blob_size)
        return not all(self.fetcher.in_flight(key) or self.cache.contains(key)
                       for key in (ChunkKey(blob.digest, i) for i in chunks))  # fmt: skip

    def _source(
        self, origin: Origin, ranges: tuple[BlobRange, ...], blob_size: int | None
    ) -> BlobSource:
        source = self.resolve(origin)
        if blob_size is not None and isinstance(source, SizeHints):
            for blob in ranges:
                source.note_size(blob.digest, blob_size)
        return source


def _failed(request_id: int, error: Exception) -> Failure:
    kind = failure_kind(error)
    log.warning("cache request %d failed (%s): %s", request_id, kind.name, error)
    return Failure(request_id, kind, str(error) or type(error).__name__)
