"""The daemon's requests and answers as typed values: what ``messages`` encodes and decodes.

Frozen dataclasses and no I/O. A request carries the id its mount chose;
the answer to it carries the same id. ``BlobInfo`` is one blob as the
daemon sees it (``lazyfs cache`` shows them): its background state, its size
when known, and how much of it is cached.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lazyfs.cache import cache_pb2 as pb
from providers.digest import Digest


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
    exact: bool = False  # no read-ahead: the mount asks for just what it needs
    piece: bool = False  # just the range, answered in ReadOk.data (``lazyfs.cache.pieces``)
    own: bool = False  # found wrong: through this origin alone, as a piece (``Read.own``)


@dataclass(frozen=True)
class Prefetch:
    id: int
    ranges: tuple[BlobRange, ...]
    origin: Origin
    blob_size: int | None = None
    # A trace replayed: fetched in this order at low priority (``lazyfs.cache.replay``).
    replay: bool = False
    piece: bool = False  # each range a piece (``Read.piece``)


@dataclass(frozen=True)
class Status:
    id: int


@dataclass(frozen=True)
class Evict:
    id: int
    range: BlobRange
    reason: str = ""


@dataclass(frozen=True)
class Background:
    id: int
    digest: Digest
    origin: Origin
    blob_size: int
    diff_id: Digest | None = None
    media_type: str = ""


Request = Read | Prefetch | Status | Evict | Background


@dataclass(frozen=True)
class Extent:
    """Blob bytes [blob_offset, blob_offset + length) at ``file_offset`` of the file ``path``."""

    path: str
    file_offset: int
    blob_offset: int
    length: int


class BlobKind(enum.Enum):
    UNKNOWN = pb.BlobState.UNKNOWN
    FETCHING = pb.BlobState.FETCHING
    COMPLETE = pb.BlobState.COMPLETE
    QUARANTINED = pb.BlobState.QUARANTINED
    PARTIAL = pb.BlobState.PARTIAL


# How a fetching blob's reason starts while its background fetch waits to go on by itself
# (no room on the cache's disk, its origin out of reach: ``lazyfs.cache.background``).
WAITING = "waiting for "


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    kind: BlobKind
    size: int = 0  # 0: not known
    cached_bytes: int = 0
    reason: str = ""


@dataclass(frozen=True)
class ReadOk:
    id: int
    extents: tuple[Extent, ...]
    data: bytes | None = None  # a piece's bytes, when not answered from cached chunks


@dataclass(frozen=True)
class PrefetchOk:
    id: int
    chunks_queued: int


@dataclass(frozen=True)
class EvictOk:
    id: int
    chunks_evicted: int


@dataclass(frozen=True)
class BackgroundOk:
    id: int
    state: BlobInfo


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
    fetched_bytes: int = 0
    blobs: tuple[BlobInfo, ...] = ()
    background_fetch: bool = False
    waits: int = 0  # of the reads, those that waited on a fetch (a chunk's or a piece's)


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


Response = ReadOk | PrefetchOk | StatusOk | EvictOk | BackgroundOk | Failure
