"""The interfaces every image provider implements: one for images, one for blobs.

``ImageSource`` finds an image and describes it; ``BlobSource`` gives a blob's
bytes, whole or by range, in blob bytes (as stored: compressed or not).
``LocalBlobSource`` is a blob source that can also make a blob a verified
local file, as the store can; copy, bind and overlay need that, fuse does not.
``Puller`` is both an image and a blob source: what resolves an image serves
its blobs (the local puller, the registry client). Every ``read_range``
checks and clamps its arguments with ``clamp_range``, so all agree on what a
range past the end or a negative one means. ``StreamingBlobSource`` also
streams a range as it arrives, with whatever else the server sends around
it (the registry client); ``stream_range`` streams from any blob source.

All are blocking: callers in trio run them through ``trio.to_thread.run_sync``
under a CapacityLimiter.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from providers.digest import Digest
from providers.manifest import ImageManifest, Layer


class ImageSource(Protocol):
    def resolve(self, reference: str) -> ImageManifest:
        """Find ``reference`` and return its manifest, layers bottom first.

        Raises NotFound when the image is not there, BadImage when it is there
        but unusable. Reads metadata only; layer bytes are left to BlobSource.
        Idempotent.
        """
        ...


class BlobSource(Protocol):
    def open(self, digest: Digest) -> BinaryIO:
        """Open the blob ``digest`` for reading from its start.

        The stream yields the blob's bytes as stored (compressed or not). It
        is not verified: wrap it in providers.digest.VerifyingReader. The
        caller closes it. Raises NotFound for an unknown digest.
        """
        ...

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of blob ``digest`` from ``offset``, in blob bytes.

        Short only at the blob's end: a range that runs past the end gives the
        bytes up to it, one that starts at or past the end gives ``b""``.
        Raises ValueError for a negative offset or length, NotFound for an
        unknown digest. Not verified: the caller checks what it serves.
        Idempotent.
        """
        ...


class StreamingBlobSource(BlobSource, Protocol):
    def stream_range(self, digest: Digest, offset: int, length: int) -> Iterator[tuple[int, bytes]]:
        """The range of ``read_range`` as ``(blob offset, bytes)`` pieces, as they arrive.

        Pieces are non-empty, in ascending blob order and never overlap;
        together they cover the range (clamped as ``read_range`` clamps it)
        without a gap. They may also hold bytes outside it: a server that
        answers a range request with the whole blob (a pull-through cache
        that has not cached it yet) gives every byte from 0 to the blob's
        end, each yielded as it goes by unless the caller stops; keep what
        is useful, drop the rest. After a transfer broke and resumed, bytes
        outside the range may be missing. Not verified.

        Arguments are checked at the call (ValueError, NotFound); transfer
        errors are raised while iterating, after the pieces that arrived.
        Closing the iterator early (``close()``) ends the transfer.
        """
        ...


@runtime_checkable
class Evicting(Protocol):
    """A blob source that keeps what it reads for others, every origin's (the cache daemon's
    client): told to drop bytes found wrong, then asked for them through the reader's own
    origin alone, not from what it keeps nor another origin's fetch of them."""

    def evict(self, digest: Digest, offset: int, length: int, reason: str) -> int: ...

    def read_again(self, digest: Digest, offset: int, length: int) -> bytes: ...


class LocalBlobSource(BlobSource, Protocol):
    def local_blob(self, layer: Layer) -> Path:
        """A local file holding ``layer``'s blob, verified against its digest.

        Fetches the blob first when it is not local yet. The file is the
        source's own: read it, never change or remove it. Raises NotFound,
        DigestMismatch or BadImage as fetching does. Idempotent.
        """
        ...


class Puller(ImageSource, BlobSource, Protocol):
    """Resolves images and serves the blobs of the images it resolved.

    ``open`` and ``read_range`` know the blobs of images this puller has
    resolved; any other digest is NotFound.
    """


def clamp_range(offset: int, length: int, size: int) -> int:
    """How many of ``length`` bytes from ``offset`` a blob of ``size`` bytes has.

    The shared argument check of ``BlobSource.read_range``: raises ValueError
    for a negative offset or length; 0 for a range that starts at or past
    the end.
    """
    if offset < 0 or length < 0:
        raise ValueError(f"negative range {offset}+{length}")
    return max(0, min(length, size - offset))


def stream_range(
    source: BlobSource, digest: Digest, offset: int, length: int
) -> Iterator[tuple[int, bytes]]:
    """``source.stream_range`` when it has one; else ``read_range`` as one piece.

    Either way the contract of ``StreamingBlobSource.stream_range`` holds,
    but that a source without streaming reads at the call, so its transfer
    errors are raised there too.
    """
    streaming = getattr(source, "stream_range", None)
    if streaming is not None:
        pieces: Iterator[tuple[int, bytes]] = streaming(digest, offset, length)
        return pieces
    data = source.read_range(digest, offset, length)
    return iter([(offset, data)] if data else [])


class RangeStream(io.RawIOBase):
    """Blob ``digest`` read from its start, range by range, through ``read`` (a source's
    ``read_range``, or another read by range): for a reader that wants a stream."""

    def __init__(self, read: Callable[[Digest, int, int], bytes], digest: Digest) -> None:
        self._read = read
        self._digest = digest
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._read(self._digest, self._position, len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
