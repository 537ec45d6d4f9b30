from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegistryBlob(_message.Message):
    __slots__ = ("host", "repository")
    HOST_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    host: str
    repository: str
    def __init__(self, host: _Optional[str] = ..., repository: _Optional[str] = ...) -> None: ...

class Origin(_message.Message):
    __slots__ = ("registry", "handle")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    registry: RegistryBlob
    handle: str
    def __init__(self, registry: _Optional[_Union[RegistryBlob, _Mapping]] = ..., handle: _Optional[str] = ...) -> None: ...

class BlobRange(_message.Message):
    __slots__ = ("digest", "offset", "length")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    length: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("range", "origin", "blob_size", "exact", "piece", "own")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    BLOB_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    OWN_FIELD_NUMBER: _ClassVar[int]
    range: BlobRange
    origin: Origin
    blob_size: int
    exact: bool
    piece: bool
    own: bool
    def __init__(self, range: _Optional[_Union[BlobRange, _Mapping]] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., blob_size: _Optional[int] = ..., exact: _Optional[bool] = ..., piece: _Optional[bool] = ..., own: _Optional[bool] = ...) -> None: ...

class Extent(_message.Message):
    __slots__ = ("path", "file_offset", "blob_offset", "length")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BLOB_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    path: str
    file_offset: int
    blob_offset: int
    length: int
    def __init__(self, path: _Optional[str] = ..., file_offset: _Optional[int] = ..., blob_offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ReadReply(_message.Message):
    __slots__ = ("extents", "data")
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    extents: _containers.RepeatedCompositeFieldContainer[Extent]
    data: bytes
    def __init__(self, extents: _Optional[_Iterable[_Union[Extent, _Mapping]]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PrefetchRequest(_message.Message):
    __slots__ = ("ranges", "origin", "blob_size", "replay", "piece")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    BLOB_SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[BlobRange]
    origin: Origin
    blob_size: int
    replay: bool
    piece: bool
    def __init__(self, ranges: _Optional[_Iterable[_Union[BlobRange, _Mapping]]] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., blob_size: _Optional[int] = ..., replay: _Optional[bool] = ..., piece: _Optional[bool] = ...) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ("range", "reason")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    range: BlobRange
    reason: str
    def __init__(self, range: _Optional[_Union[BlobRange, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class EvictReply(_message.Message):
    __slots__ = ("chunks_evicted",)
    CHUNKS_EVICTED_FIELD_NUMBER: _ClassVar[int]
    chunks_evicted: int
    def __init__(self, chunks_evicted: _Optional[int] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetReply(_message.Message):
    __slots__ = ("chunks", "bytes")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    chunks: int
    bytes: int
    def __init__(self, chunks: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class BackgroundRequest(_message.Message):
    __slots__ = ("digest", "origin", "blob_size", "diff_id", "media_type")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    BLOB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DIFF_ID_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    origin: Origin
    blob_size: int
    diff_id: str
    media_type: str
    def __init__(self, digest: _Optional[str] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., blob_size: _Optional[int] = ..., diff_id: _Optional[str] = ..., media_type: _Optional[str] = ...) -> None: ...

class BackgroundReply(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: BlobState
    def __init__(self, state: _Optional[_Union[BlobState, _Mapping]] = ...) -> None: ...

class BlobState(_message.Message):
    __slots__ = ("digest", "kind", "size", "cached_bytes", "reason")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[BlobState.Kind]
        FETCHING: _ClassVar[BlobState.Kind]
        COMPLETE: _ClassVar[BlobState.Kind]
        QUARANTINED: _ClassVar[BlobState.Kind]
        PARTIAL: _ClassVar[BlobState.Kind]
    UNKNOWN: BlobState.Kind
    FETCHING: BlobState.Kind
    COMPLETE: BlobState.Kind
    QUARANTINED: BlobState.Kind
    PARTIAL: BlobState.Kind
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    digest: str
    kind: BlobState.Kind
    size: int
    cached_bytes: int
    reason: str
    def __init__(self, digest: _Optional[str] = ..., kind: _Optional[_Union[BlobState.Kind, str]] = ..., size: _Optional[int] = ..., cached_bytes: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PrefetchReply(_message.Message):
    __slots__ = ("chunks_queued",)
    CHUNKS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    chunks_queued: int
    def __init__(self, chunks_queued: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("used_bytes", "limit_bytes", "chunks", "pinned_chunks", "fetches_in_flight", "chunk_size", "reads", "fetches", "fetched_bytes", "blobs", "background_fetch", "waits")
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PINNED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FETCHES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    FETCHES_FIELD_NUMBER: _ClassVar[int]
    FETCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FETCH_FIELD_NUMBER: _ClassVar[int]
    WAITS_FIELD_NUMBER: _ClassVar[int]
    used_bytes: int
    limit_bytes: int
    chunks: int
    pinned_chunks: int
    fetches_in_flight: int
    chunk_size: int
    reads: int
    fetches: int
    fetched_bytes: int
    blobs: _containers.RepeatedCompositeFieldContainer[BlobState]
    background_fetch: bool
    waits: int
    def __init__(self, used_bytes: _Optional[int] = ..., limit_bytes: _Optional[int] = ..., chunks: _Optional[int] = ..., pinned_chunks: _Optional[int] = ..., fetches_in_flight: _Optional[int] = ..., chunk_size: _Optional[int] = ..., reads: _Optional[int] = ..., fetches: _Optional[int] = ..., fetched_bytes: _Optional[int] = ..., blobs: _Optional[_Iterable[_Union[BlobState, _Mapping]]] = ..., background_fetch: _Optional[bool] = ..., waits: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("kind", "reason")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FAILED: _ClassVar[Error.Kind]
        NOT_FOUND: _ClassVar[Error.Kind]
        UNAUTHORIZED: _ClassVar[Error.Kind]
        DIGEST_MISMATCH: _ClassVar[Error.Kind]
        TEMPORARY: _ClassVar[Error.Kind]
        BAD_REQUEST: _ClassVar[Error.Kind]
    FAILED: Error.Kind
    NOT_FOUND: Error.Kind
    UNAUTHORIZED: Error.Kind
    DIGEST_MISMATCH: Error.Kind
    TEMPORARY: Error.Kind
    BAD_REQUEST: Error.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    kind: Error.Kind
    reason: str
    def __init__(self, kind: _Optional[_Union[Error.Kind, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("id", "read", "prefetch", "status", "evict", "background", "forget")
    ID_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVICT_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    id: int
    read: ReadRequest
    prefetch: PrefetchRequest
    status: StatusRequest
    evict: EvictRequest
    background: BackgroundRequest
    forget: ForgetRequest
    def __init__(self, id: _Optional[int] = ..., read: _Optional[_Union[ReadRequest, _Mapping]] = ..., prefetch: _Optional[_Union[PrefetchRequest, _Mapping]] = ..., status: _Optional[_Union[StatusRequest, _Mapping]] = ..., evict: _Optional[_Union[EvictRequest, _Mapping]] = ..., background: _Optional[_Union[BackgroundRequest, _Mapping]] = ..., forget: _Optional[_Union[ForgetRequest, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("id", "read", "prefetch", "status", "error", "evict", "background", "forget")
    ID_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EVICT_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    id: int
    read: ReadReply
    prefetch: PrefetchReply
    status: StatusReply
    error: Error
    evict: EvictReply
    background: BackgroundReply
    forget: ForgetReply
    def __init__(self, id: _Optional[int] = ..., read: _Optional[_Union[ReadReply, _Mapping]] = ..., prefetch: _Optional[_Union[PrefetchReply, _Mapping]] = ..., status: _Optional[_Union[StatusReply, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., evict: _Optional[_Union[EvictReply, _Mapping]] = ..., background: _Optional[_Union[BackgroundReply, _Mapping]] = ..., forget: _Optional[_Union[ForgetReply, _Mapping]] = ...) -> None: ...
