"""A layer's tar stream as lazyfs reads it (applying and indexing): in order, distrusted.

``LayerReader`` lets tarfile's random-access mode read a forward-only stream
(forward seeks become reads) and turns decompression failures into
``BadImage``; ``CheckedTarInfo`` treats a damaged header as damage, not as
the end of the archive, and bounds extended headers before tarfile reads
them whole.
"""

from __future__ import annotations

import decimal
import errno
import gzip
import lzma
import os
import tarfile
import zlib
from typing import BinaryIO, NoReturn

import zstandard

from providers.errors import BadImage, bad_entry

CHUNK = 1 << 20
# tarfile reads pax and GNU long-name headers whole into memory.
MAX_HEADER_BYTES = 1 << 20
# What any reader of a layer refuses past: entries per layer, bytes per
# entry, and owner ids ((uid_t)-1 means "leave unchanged" to chown).
MAX_ENTRIES = 10_000_000
MAX_ENTRY_SIZE = 1 << 40
MAX_ID = (1 << 32) - 2
_HEADER_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
    | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)

# Not in typeshed, but part of tarfile since Python 3.2.
_DAMAGED_HEADER: tuple[type[Exception], ...] = (
    tarfile.TruncatedHeaderError,  # type: ignore[attr-defined]
    tarfile.InvalidHeaderError,  # type: ignore[attr-defined]
)


class LayerReader:
    """The layer stream as tarfile's random-access mode wants it, read in order.

    tarfile's stream mode copies its whole buffer for every header it reads,
    which costs more than the rest of the extraction; its random-access mode
    only ever seeks forward over one archive, so forward seeks are reads.
    Decompression failures become BadImage here, on the read side only, so a
    failing write to the rootfs is never mistaken for a corrupt layer.
    """

    def __init__(self, stream: BinaryIO, layer: str) -> None:
        self._stream = stream
        self._layer = layer
        self._position = 0

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self._stream.read(size)
        except (EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as error:
            raise self._corrupt(error) from error
        except OSError as error:
            # gzip and bz2 report bad data as OSError without an errno; an I/O
            # error has one and is not the image's fault.
            if isinstance(error, gzip.BadGzipFile) or error.errno is None:
                raise self._corrupt(error) from error
            raise
        self._position += len(data)
        return data

    def _corrupt(self, error: Exception) -> BadImage:
        return BadImage(f"bad layer {self._layer}: corrupt compressed data: {error}")

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        if whence != os.SEEK_SET or offset < self._position:
            raise tarfile.ReadError("a layer stream cannot seek backwards")
        # At EOF this stops short; tarfile notices the short read that follows.
        while self._position < offset and self.read(min(CHUNK, offset - self._position)):
            pass
        return self._position

    def tell(self) -> int:
        return self._position

    def write(self, data: bytes, /) -> NoReturn:
        raise OSError(errno.EBADF, "layer streams are read-only")

    def close(self) -> None:
        """The caller owns the stream."""


class CheckedTarInfo(tarfile.TarInfo):
    """A member header that treats damage as damage, not as the end.

    tarfile stops quietly at a truncated or garbled header after the first
    one, which would make a damaged layer look complete; and it reads
    extended headers whole, so their size is bounded first.
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> CheckedTarInfo:
        try:
            return super().fromtarfile(archive)
        except _DAMAGED_HEADER as error:
            raise tarfile.ReadError(f"damaged header: {error}") from None

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"extended header of {self.size} bytes")
        return super()._proc_member(archive)  # type: ignore[misc, no-any-return]


MAX_XATTR_VALUE_BYTES = 1 << 16  # the kernel's XATTR_SIZE_MAX
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_NS = 1_000_000_000


def pax_mtime_ns(member: tarfile.TarInfo, layer: str) -> int:
    """The member's mtime in nanoseconds, exact when a pax header gives it."""
    exact = member.pax_headers.get("mtime")
    try:
        # A float loses the nanoseconds of a pax mtime; its text keeps them.
        mtime_ns = int(decimal.Decimal(exact) * _NS) if exact else int(member.mtime) * _NS
    except (decimal.InvalidOperation, ValueError, OverflowError):
        raise bad_entry(layer, member.name, f"has the mtime {exact!r}") from None
    if abs(mtime_ns) >= 1 << 62:
        raise bad_entry(layer, member.name, f"has the absurd mtime {member.mtime}")
    return mtime_ns


def pax_xattrs(member: tarfile.TarInfo, layer: str) -> dict[str, bytes]:
    """The member's xattrs (``SCHILY.xattr.*`` pax headers), in header order."""
    found: dict[str, bytes] = {}
    for key, text in member.pax_headers.items():
        if key.startswith(_XATTR_PAX_PREFIX):
            # tarfile decoded binary values with surrogateescape; undo it.
            value = text.encode("utf-8", "surrogateescape")
            if len(value) > MAX_XATTR_VALUE_BYTES:
                raise bad_entry(layer, member.name, f"has an xattr of {len(value)} bytes")
            found[key[len(_XATTR_PAX_PREFIX) :]] = value
    return found
