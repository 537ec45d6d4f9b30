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
    __slots__ = ("range", "origin", "blob_size")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    BLOB_SIZE_FIELD_NUMBER: _ClassVar[int]
    range: BlobRange
    origin: Origin
    blob_size: int
    def __init__(self, range: _Optional[_Union[BlobRange, _Mapping]] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., blob_size: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("extents",)
    EXTENTS_FIELD_NUMBER: _ClassVar[int]
    extents: _containers.RepeatedCompositeFieldContainer[Extent]
    def __init__(self, extents: _Optional[_Iterable[_Union[Extent, _Mapping]]] = ...) -> None: ...

class PrefetchRequest(_message.Message):
    __slots__ = ("ranges", "origin")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[BlobRange]
    origin: Origin
    def __init__(self, ranges: _Optional[_Iterable[_Union[BlobRange, _Mapping]]] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ...) -> None: ...

class PrefetchReply(_message.Message):
    __slots__ = ("chunks_queued",)
    CHUNKS_QUEUED_FIELD_NUMBER: _ClassVar[int]
    chunks_queued: int
    def __init__(self, chunks_queued: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("used_bytes", "limit_bytes", "chunks", "pinned_chunks", "fetches_in_flight", "chunk_size", "reads", "fetches")
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PINNED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FETCHES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    FETCHES_FIELD_NUMBER: _ClassVar[int]
    used_bytes: int
    limit_bytes: int
    chunks: int
    pinned_chunks: int
    fetches_in_flight: int
    chunk_size: int
    reads: int
    fetches: int
    def __init__(self, used_bytes: _Optional[int] = ..., limit_bytes: _Optional[int] = ..., chunks: _Optional[int] = ..., pinned_chunks: _Optional[int] = ..., fetches_in_flight: _Optional[int] = ..., chunk_size: _Optional[int] = ..., reads: _Optional[int] = ..., fetches: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("id", "read", "prefetch", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: int
    read: ReadRequest
    prefetch: PrefetchRequest
    status: StatusRequest
    def __init__(self, id: _Optional[int] = ..., read: _Optional[_Union[ReadRequest, _Mapping]] = ..., prefetch: _Optional[_Union[PrefetchRequest, _Mapping]] = ..., status: _Optional[_Union[StatusRequest, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("id", "read", "prefetch", "status", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    read: ReadReply
    prefetch: PrefetchReply
    status: StatusReply
    error: Error
    def __init__(self, id: _Optional[int] = ..., read: _Optional[_Union[ReadReply, _Mapping]] = ..., prefetch: _Optional[_Union[PrefetchReply, _Mapping]] = ..., status: _Optional[_Union[StatusReply, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...
