"""The daemon's messages as typed values, checked on the way in: no I/O here.

``decode_request`` turns a frame's payload into a ``Read``, ``Prefetch``,
``Status``, ``Evict``, ``Background`` or ``Forget`` (or raises BadRequest naming what
is wrong, with the request's id when it had one, so the daemon can answer
it); ``encode_request`` does the
reverse for the mount. ``encode_response``/``decode_response`` do the same for
the answers: ``ReadOk``, ``PrefetchOk``, ``StatusOk``, ``EvictOk``,
``BackgroundOk``, ``ForgetOk`` and ``Failure``. The values are in ``values`` (a
forget's in ``forget_values``) and named here too.
``failure_kind`` maps an exception onto the wire's error kinds, the one place
the daemon's errors are translated for its clients.

Encoding then decoding a value gives the value back; the wire format itself is
``cache.proto``.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from lazyfs.cache import cache_pb2 as pb
from lazyfs.cache import values
from lazyfs.cache.forget_values import MAX_FORGET, Forget, ForgetOk, forget_ok_pb, forget_pb
from lazyfs.cache.framing import ProtocolError
from lazyfs.cache.values import (
    Background,
    BackgroundOk,
    BlobInfo,
    BlobKind,
    BlobRange,
    Evict,
    EvictOk,
    Extent,
    Failure,
    FailureKind,
    HandleOrigin,
    Origin,
    Prefetch,
    PrefetchOk,
    Read,
    ReadOk,
    RegistryOrigin,
    Status,
    StatusOk,
)
from providers.digest import Digest, parse_digest
from providers.errors import (
    BadImage,
    DigestMismatch,
    NotFound,
    TemporaryFailure,
    Unauthorized,
)

# One read asks for what one FUSE read or one prefetch step needs, not a blob:
# bounded so that a single request cannot hold the daemon on gigabytes.
MAX_READ_LENGTH = 64 << 20
MAX_PREFETCH_RANGES = 4096
# What a status lists of the blobs: enough for any machine's images, bounded
# so that the answer stays within one frame, each blob's reason too.
MAX_STATUS_BLOBS = 4096
MAX_BLOB_REASON = 64  # bytes: 4,096 blobs of sha512 digests fit 1 MiB
# A failure's reason: an error's one line, which may quote a registry's words.
MAX_REASON = 1000

__all__ = [
    "MAX_PREFETCH_RANGES",
    "MAX_READ_LENGTH",
    "Background",
    "BackgroundOk",
    "BadRequest",
    "BlobInfo",
    "BlobKind",
    "BlobRange",
    "Evict",
    "EvictOk",
    "Extent",
    "Failure",
    "FailureKind",
    "Forget",
    "ForgetOk",
    "HandleOrigin",
    "Origin",
    "Prefetch",
    "PrefetchOk",
    "Read",
    "ReadOk",
    "RegistryOrigin",
    "Request",
    "Response",
    "Status",
    "StatusOk",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "failure_kind",
]


Request = values.Request | Forget
Response = values.Response | ForgetOk


class BadRequest(ProtocolError):
    """A payload that is not a request we can act on; ``request_id`` when it could be read.

    With an id, the daemon answers it (BAD_REQUEST) and goes on; without one
    the stream cannot be trusted and the connection is dropped.
    """

    def __init__(self, reason: str, request_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


def failure_kind(error: BaseException) -> FailureKind:
    """The wire's name for ``error``: what a client may do about it depends on it."""
    # Most specific first: the classes do not overlap today, but a subclass
    # added later must not change the answer for its parent.
    table: tuple[tuple[type[BaseException], FailureKind], ...] = (
        (BadRequest, FailureKind.BAD_REQUEST),
        (NotFound, FailureKind.NOT_FOUND),
        (Unauthorized, FailureKind.UNAUTHORIZED),
        (DigestMismatch, FailureKind.DIGEST_MISMATCH),
        (TemporaryFailure, FailureKind.TEMPORARY),
        (BadImage, FailureKind.FAILED),
    )
    for cls, kind in table:
        if isinstance(error, cls):
            return kind
    return FailureKind.FAILED


# Requests


def encode_request(request: Request) -> bytes:
    message = pb.Request(id=request.id)
    if isinstance(request, Read):
        message.read.range.CopyFrom(_range_pb(request.range))
        message.read.origin.CopyFrom(_origin_pb(request.origin))
        if request.blob_size is not None:
            message.read.blob_size = request.blob_size
        message.read.exact = request.exact
        message.read.piece = request.piece
        message.read.own = request.own
    elif isinstance(request, Prefetch):
        message.prefetch.ranges.extend(_range_pb(r) for r in request.ranges)
        message.prefetch.origin.CopyFrom(_origin_pb(request.origin))
        if request.blob_size is not None:
            message.prefetch.blob_size = request.blob_size
        message.prefetch.replay = request.replay
        message.prefetch.piece = request.piece
    elif isinstance(request, Evict):
        message.evict.range.CopyFrom(_range_pb(request.range))
        message.evict.reason = request.reason
    elif isinstance(request, Background):
        body = message.background
        body.digest = request.digest
        body.origin.CopyFrom(_origin_pb(request.origin))
        body.blob_size = request.blob_size
        body.diff_id = request.diff_id or ""
        body.media_type = request.media_type
    elif isinstance(request, Forget):
        message.forget.CopyFrom(forget_pb(request))
    else:
        message.status.SetInParent()
    return message.SerializeToString()


def decode_request(payload: bytes) -> Request:
    """The request in ``payload``. Raises BadRequest naming the first thing wrong."""
    message = pb.Request()
    try:
        message.ParseFromString(payload)
    except DecodeError as error:
        raise BadRequest(f"undecodable request: {error}") from None
    request_id = message.id
    body = message.WhichOneof("body")
    try:
        if body == "read":
            read = message.read
            if not read.HasField("range"):
                raise BadRequest("read request without a range")
            blob_size = read.blob_size if read.HasField("blob_size") else None
            return Read(
                request_id,
                _range(read.range),
                _origin(read.origin, read.HasField("origin")),
                blob_size,
                read.exact,
                read.piece,
                read.own,
            )
        if body == "prefetch":
            prefetch = message.prefetch
            if len(prefetch.ranges) > MAX_PREFETCH_RANGES:
                raise BadRequest(
                    f"prefetch of {len(prefetch.ranges)} ranges; the limit is {MAX_PREFETCH_RANGES}"
                )
            ranges = tuple(_range(r) for r in prefetch.ranges)
            origin = _origin(prefetch.origin, prefetch.HasField("origin"))
            size = prefetch.blob_size if prefetch.HasField("blob_size") else None
            return Prefetch(request_id, ranges, origin, size, prefetch.replay, prefetch.piece)
        if body == "status":
            return Status(request_id)
        if body == "evict":
            if not message.evict.HasField("range"):
                raise BadRequest("evict request without a range")
            return Evict(request_id, _range(message.evict.range), message.evict.reason)
        if body == "background":
            return _background(request_id, message.background)
        if body == "forget":
            if len(message.forget.digests) > MAX_FORGET:
                raise BadRequest(
                    f"forget of {len(message.forget.digests)} blobs; at most {MAX_FORGET}"
                )
            return Forget(request_id, tuple(_digest(d, "blob") for d in message.forget.digests))
        raise BadRequest("request without a body (read, prefetch, status, evict, background...)")
    except BadRequest as error:
        raise BadRequest(f"request {request_id}: {error.reason}", request_id) from None


def _background(request_id: int, message: pb.BackgroundRequest) -> Background:
    digest = _digest(message.digest, "blob")
    diff_id = _digest(message.diff_id, "diff_id") if message.diff_id else None
    if message.blob_size == 0:
        raise BadRequest("background fetch without the blob's size")
    origin = _origin(message.origin, message.HasField("origin"))
    return Background(request_id, digest, origin, message.blob_size, diff_id, message.media_type)


def _digest(text: str, what: str) -> Digest:
    try:
        return parse_digest(text)
    except BadImage:
        raise BadRequest(f"invalid {what} digest {text!r}") from None


def _range_pb(blob_range: BlobRange) -> pb.BlobRange:
    return pb.BlobRange(
        digest=blob_range.digest, offset=blob_range.offset, length=blob_range.length
    )


def _range(message: pb.BlobRange) -> BlobRange:
    digest = _digest(message.digest, "blob")
    if message.length > MAX_READ_LENGTH:
        raise BadRequest(f"range of {message.length} bytes; the limit is {MAX_READ_LENGTH}")
    return BlobRange(digest, message.offset, message.length)


def _origin_pb(origin: Origin) -> pb.Origin:
    if isinstance(origin, RegistryOrigin):
        return pb.Origin(registry=pb.RegistryBlob(host=origin.host, repository=origin.repository))
    return pb.Origin(handle=origin.handle)


def _origin(message: pb.Origin, present: bool) -> Origin:
    source = message.WhichOneof("source") if present else None
    if source == "registry":
        if not message.registry.host or not message.registry.repository:
            raise BadRequest("registry origin without a host or repository")
        return RegistryOrigin(message.registry.host, message.registry.repository)
    if source == "handle":
        if not message.handle:
            raise BadRequest("empty origin handle")
        return HandleOrigin(message.handle)
    raise BadRequest("request without an origin (registry or handle)")


# Responses


def encode_response(response: Response) -> bytes:
    message = pb.Response(id=response.id)
    if isinstance(response, ReadOk):
        message.read.SetInParent()
        message.read.extents.extend(
            pb.Extent(
                path=e.path, file_offset=e.file_offset, blob_offset=e.blob_offset, length=e.length
            )
            for e in response.extents
        )
        if response.data is not None:
            message.read.data = response.data
    elif isinstance(response, PrefetchOk):
        message.prefetch.chunks_queued = response.chunks_queued
        message.prefetch.SetInParent()
    elif isinstance(response, StatusOk):
        message.status.CopyFrom(
            pb.StatusReply(
                used_bytes=response.used_bytes,
                limit_bytes=response.limit_bytes,
                chunks=response.chunks,
                pinned_chunks=response.pinned_chunks,
                fetches_in_flight=response.fetches_in_flight,
                chunk_size=response.chunk_size,
                reads=response.reads,
                fetches=response.fetches,
                fetched_bytes=response.fetched_bytes,
                blobs=[_blob_pb(b) for b in response.blobs[:MAX_STATUS_BLOBS]],
                background_fetch=response.background_fetch,
                waits=response.waits,
            )
        )
    elif isinstance(response, EvictOk):
        message.evict.chunks_evicted = response.chunks_evicted
        message.evict.SetInParent()
    elif isinstance(response, BackgroundOk):
        message.background.state.CopyFrom(_blob_pb(response.state))
    elif isinstance(response, ForgetOk):
        message.forget.CopyFrom(forget_ok_pb(response))
    else:
        message.error.kind = response.kind.value
        message.error.reason = wire_text(response.reason, MAX_REASON)
        message.error.SetInParent()
    return message.SerializeToString()


def decode_response(payload: bytes) -> Response:
    """The response in ``payload``. Raises ProtocolError (a broken peer) when it is not one."""
    message = pb.Response()
    try:
        message.ParseFromString(payload)
    except DecodeError as error:
        raise ProtocolError(f"undecodable response: {error}") from None
    body = message.WhichOneof("body")
    if body == "read":
        return ReadOk(
            message.id,
            tuple(
                Extent(e.path, e.file_offset, e.blob_offset, e.length) for e in message.read.extents
            ),
            message.read.data if message.read.HasField("data") else None,
        )
    if body == "prefetch":
        return PrefetchOk(message.id, message.prefetch.chunks_queued)
    if body == "status":
        s = message.status
        return StatusOk(
            message.id,
            s.used_bytes,
            s.limit_bytes,
            s.chunks,
            s.pinned_chunks,
            s.fetches_in_flight,
            s.chunk_size,
            s.reads,
            s.fetches,
            s.fetched_bytes,
            tuple(_blob(b) for b in s.blobs),
            s.background_fetch,
            s.waits,
        )
    if body == "evict":
        return EvictOk(message.id, message.evict.chunks_evicted)
    if body == "background":
        return BackgroundOk(message.id, _blob(message.background.state))
    if body == "forget":
        return ForgetOk(message.id, message.forget.chunks, message.forget.bytes)
    if body == "error":
        try:
            kind = FailureKind(message.error.kind)
        except ValueError:
            # A newer daemon's kind: the client treats it as a plain failure.
            kind = FailureKind.FAILED
        return Failure(message.id, kind, message.error.reason)
    raise ProtocolError(f"response {message.id} without a body")


def _blob_pb(info: BlobInfo) -> pb.BlobState:
    return pb.BlobState(
        digest=info.digest,
        kind=info.kind.value,
        size=info.size,
        cached_bytes=info.cached_bytes,
        reason=wire_text(info.reason, MAX_BLOB_REASON),
    )


def wire_text(text: str, most: int) -> str:
    """``text`` as protobuf can send it: at most ``most`` bytes of UTF-8, and any lone
    surrogate written out (a registry's JSON error message may hold ``\\ud800``)."""
    if text.isascii():
        return text[:most]
    return text.encode("utf-8", "backslashreplace")[:most].decode("utf-8", "ignore")


def _blob(message: pb.BlobState) -> BlobInfo:
    try:
        kind = BlobKind(message.kind)
    except ValueError:
        kind = BlobKind.UNKNOWN  # a newer daemon's state
    return BlobInfo(
        Digest(message.digest), kind, message.size, message.cached_bytes, message.reason
    )
