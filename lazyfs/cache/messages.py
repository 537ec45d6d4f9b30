"""The daemon's messages as typed values, checked on the way in: no I/O here.

``decode_request`` turns a frame's payload into a ``Read``, ``Prefetch`` or
``Status`` (or raises BadRequest naming what is wrong, with the request's id
when it had one, so the daemon can answer it); ``encode_request`` does the
reverse for the mount. ``encode_response``/``decode_response`` do the same for
the answers: ``ReadOk``, ``PrefetchOk``, ``StatusOk`` and ``Failure``.
``failure_kind`` maps an exception onto the wire's error kinds, the one place
the daemon's errors are translated for its clients.

Encoding then decoding a value gives the value back; the wire format itself is
``cache.proto``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from lazyfs.cache import cache_pb2 as pb
from lazyfs.cache.framing import ProtocolError
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


class BadRequest(ProtocolError):
    """A payload that is not a request we can act on; ``request_id`` when it could be read.

    With an id, the daemon answers it (BAD_REQUEST) and goes on; without one
    the stream cannot be trusted and the connection is dropped.
    """

    def __init__(self, reason: str, request_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


@dataclass(frozen=True)
class RegistryOrigin:
    host: str
    repository: str


@dataclass(frozen=True)
class HandleOrigin:
    handle: str


Origin = RegistryOrigin | HandleOrigin


@dataclass(frozen=True)
class BlobRange:
    digest: Digest
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Read:
    id: int
    range: BlobRange
    origin: Origin
    blob_size: int | None = None


@dataclass(frozen=True)
class Prefetch:
    id: int
    ranges: tuple[BlobRange, ...]
    origin: Origin


@dataclass(frozen=True)
class Status:
    id: int


Request = Read | Prefetch | Status


@dataclass(frozen=True)
class Extent:
    """Blob bytes [blob_offset, blob_offset + length) at ``file_offset`` of the file ``path``."""

    path: str
    file_offset: int
    blob_offset: int
    length: int


@dataclass(frozen=True)
class ReadOk:
    id: int
    extents: tuple[Extent, ...]


@dataclass(frozen=True)
class PrefetchOk:
    id: int
    chunks_queued: int


@dataclass(frozen=True)
class StatusOk:
    id: int
    used_bytes: int
    limit_bytes: int
    chunks: int
    pinned_chunks: int
    fetches_in_flight: int
    chunk_size: int
    reads: int = 0
    fetches: int = 0


class FailureKind(enum.Enum):
    FAILED = pb.Error.FAILED
    NOT_FOUND = pb.Error.NOT_FOUND
    UNAUTHORIZED = pb.Error.UNAUTHORIZED
    DIGEST_MISMATCH = pb.Error.DIGEST_MISMATCH
    TEMPORARY = pb.Error.TEMPORARY
    BAD_REQUEST = pb.Error.BAD_REQUEST


@dataclass(frozen=True)
class Failure:
    id: int
    kind: FailureKind
    reason: str


Response = ReadOk | PrefetchOk | StatusOk | Failure


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
    elif isinstance(request, Prefetch):
        message.prefetch.ranges.extend(_range_pb(r) for r in request.ranges)
        message.prefetch.origin.CopyFrom(_origin_pb(request.origin))
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
            )
        if body == "prefetch":
            prefetch = message.prefetch
            if len(prefetch.ranges) > MAX_PREFETCH_RANGES:
                raise BadRequest(
                    f"prefetch of {len(prefetch.ranges)} ranges; the limit is {MAX_PREFETCH_RANGES}"
                )
            ranges = tuple(_range(r) for r in prefetch.ranges)
            return Prefetch(
                request_id, ranges, _origin(prefetch.origin, prefetch.HasField("origin"))
            )
        if body == "status":
            return Status(request_id)
        raise BadRequest("request without a body (read, prefetch or status)")
    except BadRequest as error:
        raise BadRequest(f"request {request_id}: {error.reason}", request_id) from None


def _range_pb(blob_range: BlobRange) -> pb.BlobRange:
    return pb.BlobRange(
        digest=blob_range.digest, offset=blob_range.offset, length=blob_range.length
    )


def _range(message: pb.BlobRange) -> BlobRange:
    try:
        digest = parse_digest(message.digest)
    except BadImage:
        raise BadRequest(f"invalid blob digest {message.digest!r}") from None
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
            )
        )
    else:
        message.error.kind = response.kind.value
        message.error.reason = response.reason
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
        )
    if body == "error":
        try:
            kind = FailureKind(message.error.kind)
        except ValueError:
            # A newer daemon's kind: the client treats it as a plain failure.
            kind = FailureKind.FAILED
        return Failure(message.id, kind, message.error.reason)
    raise ProtocolError(f"response {message.id} without a body")
