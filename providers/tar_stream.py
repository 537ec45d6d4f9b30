"""A layer's tar stream as lazyfs reads it (applying and indexing): in order, distrusted.

``LayerReader`` lets tarfile's random-access mode read a forward-only stream
(forward seeks become reads), turns decompression failures into
``BadImage`` and bounds how far a layer unpacks (``LayerLimits``);
``CheckedTarInfo`` treats a damaged header as damage, not as the end of the
archive, bounds extended headers before tarfile reads them whole, and parses
GNU sparse maps with ``providers.tar_sparse``; ``file_layout`` says where a
regular entry's bytes are, the one answer every reader uses.
"""

from __future__ import annotations

import decimal
import errno
import gzip
import lzma
import os
import tarfile
import zlib
from collections.abc import Callable
from typing import BinaryIO, NoReturn, cast

import zstandard

from providers.errors import BadImage, bad_entry
from providers.layer_limits import MAX_ENTRY_SIZE as MAX_ENTRY_SIZE  # re-exported
from providers.layer_limits import MAX_XATTR_VALUE_BYTES as MAX_XATTR_VALUE_BYTES  # re-exported
from providers.layer_limits import RATIO_FLOOR as RATIO_FLOOR  # re-exported
from providers.layer_limits import LayerLimits as LayerLimits  # re-exported
from providers.tar_sparse import (
    BLOCK,
    MAX_EXTENTS,
    FileLayout,
    checked_extents,
    map_00,
    map_01,
    map_10,
    number,
    old_gnu_extension,
)

CHUNK = 1 << 20
# tarfile reads pax and GNU long-name headers whole into memory.
MAX_HEADER_BYTES = 1 << 20
# What any reader of a layer refuses past: entries per layer, and bytes per
# entry (providers.layer_limits).  Owner ids: layer_entry.MAX_ID.
MAX_ENTRIES = 10_000_000
_SPARSE_PREFIX = "GNU.sparse."
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
    failing write to the rootfs is never mistaken for a corrupt layer; so
    does reading past what ``limits`` allow a layer whose blob has
    ``compressed_size`` bytes, before the bytes past it are handed on.
    """

    def __init__(
        self,
        stream: BinaryIO,
        layer: str,
        *,
        limits: LayerLimits | None = None,
        compressed_size: int | None = None,
    ) -> None:
        self._stream = stream
        self._layer = layer
        self._position = 0
        self._limits = limits or LayerLimits()
        self._compressed_size = compressed_size
        self._most = self._limits.bound(compressed_size)[0]

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
        if self._position > self._most:
            self._limits.check(self._layer, self._position, self._compressed_size)
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
    extended headers whole, so their size is bounded first.  GNU sparse
    maps are read with ``providers.tar_sparse``'s bounded parsers; a member
    records ``data_end``, where the archive's next header starts, so that
    ``file_layout`` can check its data fills exactly its own blocks.
    """

    data_end: int
    header_size: int

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> CheckedTarInfo:
        try:
            return super().fromtarfile(archive)
        except _DAMAGED_HEADER as error:
            raise tarfile.ReadError(f"damaged header: {error}") from None

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> CheckedTarInfo:
        found = super().frombuf(buf, encoding, errors)
        # The size field as written, before any pax header changes it.
        found.header_size = found.size
        return found

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise tarfile.ReadError(f"extended header of {self.size} bytes")
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        if self.type == tarfile.XGLTYPE and any(
            key.startswith(_SPARSE_PREFIX) for key in archive.pax_headers
        ):
            raise tarfile.ReadError("a global header has GNU sparse keys")
        pending = vars(member).pop("_sparse_end", None)
        if pending is not None:
            # tarfile takes the size from whichever pax key came last, and
            # misplaces the next header of a PAX 1.0 entry with a size key.
            member.size, archive.offset = pending
        member.data_end = archive.offset  # type: ignore[attr-defined]
        return member

    def _proc_sparse(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        """Old GNU sparse header: the map in it and its extension blocks."""
        slots, extended, realsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        found: list[tuple[int, int]] = list(slots)
        fileobj = cast(BinaryIO, archive.fileobj)
        while extended:
            more, extended = old_gnu_extension(fileobj.read(BLOCK))
            found += more
            if len(found) > MAX_EXTENTS:
                raise tarfile.ReadError(f"{self.name!r} has more than {MAX_EXTENTS} extents")
        self.sparse = found  # type: ignore[assignment]  # typeshed has bytes
        self.offset_data = fileobj.tell()
        archive.offset = self.offset_data + _blocks(self.size)
        self.size = realsize
        return self

    def _proc_gnusparse_00(self, next: tarfile.TarInfo, *found: object) -> None:
        # tarfile passes (pax_headers, buf) up to Python 3.11.9 and 3.12.4, and
        # (raw_headers,), a list of (length, keyword, value) bytes, since the
        # fix for gh-121285 (3.11.10, 3.12.5, 3.13): both read the same.
        if len(found) == 2:
            pax_headers = cast(dict[str, str], found[0])
            buf = cast(bytes, found[1])
        else:
            raw = cast(list[tuple[int, bytes, bytes]], found[0])
            pax_headers = {
                k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for _, k, v in raw
            }
            buf = b"".join(_pax_record(k, v) for _, k, v in raw)
        self._sparse(next, pax_headers, lambda: (map_00(buf), 0), "GNU.sparse.size")

    def _proc_gnusparse_01(self, next: tarfile.TarInfo, pax_headers: dict[str, str]) -> None:
        found = pax_headers["GNU.sparse.map"]
        self._sparse(next, pax_headers, lambda: (map_01(found), 0), "GNU.sparse.size")

    def _proc_gnusparse_10(
        self, next: tarfile.TarInfo, pax_headers: dict[str, str], archive: tarfile.TarFile
    ) -> None:
        fileobj = cast(BinaryIO, archive.fileobj)
        self._sparse(
            next,
            pax_headers,
            lambda: map_10(fileobj, _stored(next, pax_headers)),
            "GNU.sparse.realsize",
        )

    def _sparse(
        self,
        next: tarfile.TarInfo,
        pax_headers: dict[str, str],
        read_map: Callable[[], tuple[list[tuple[int, int]], int]],
        size_key: str,
    ) -> None:
        """Give ``next`` the map ``read_map`` reads (and the bytes it took), and its sizes."""
        if self.type == tarfile.XGLTYPE:
            raise tarfile.ReadError("a global header has a GNU sparse map")
        if not next.isreg():
            raise tarfile.ReadError(f"{next.name!r}: a sparse map on a non-regular entry")
        if size_key not in pax_headers:
            raise tarfile.ReadError(f"{next.name!r}: a sparse map without {size_key}")
        realsize = number(pax_headers[size_key], size_key)
        header_end = next.offset_data
        found, used = read_map()
        next.sparse = found  # type: ignore[assignment]  # typeshed has bytes
        next.offset_data = header_end + used
        data_end = header_end + _blocks(_stored(next, pax_headers))
        next._sparse_end = (realsize, data_end)  # type: ignore[attr-defined]


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One PAX extended header record, ``"%d %s=%s\\n"``, its length counting itself."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _blocks(count: int) -> int:
    """``count`` bytes rounded up to whole tar blocks."""
    return -(-count // BLOCK) * BLOCK


def _stored(member: tarfile.TarInfo, pax_headers: dict[str, str]) -> int:
    """The bytes the archive gives ``member``'s data (a sparse map's included)."""
    if "size" in pax_headers:
        return number(pax_headers["size"], "size")
    return member.header_size  # type: ignore[attr-defined, no-any-return]


def file_layout(member: tarfile.TarInfo, *, layer: str) -> FileLayout:
    """Where the bytes of the regular entry ``member`` (read by ``CheckedTarInfo``) are.

    Raises BadImage naming the entry when its apparent size passes
    ``MAX_ENTRY_SIZE`` (holes count: a sparse file claiming a TiB is a bomb
    for anyone who reads it), when its sparse map is damaged
    (``tar_sparse.checked_extents``), or when its data does not fill exactly
    the blocks the archive gives it: what its size or map says would then
    run into the next entry.  The bytes actually stored, not the holes,
    count toward the layer's ``LayerLimits``.
    """
    name, size = member.name, member.size
    if not 0 <= size <= MAX_ENTRY_SIZE:
        raise bad_entry(layer, name, f"claims {size} bytes")
    extents = None
    sparse = cast(list[tuple[int, int]] | None, member.sparse)  # typeshed has bytes
    if sparse is not None:
        extents = checked_extents(sparse, size, layer=layer, entry=name)
    layout = FileLayout(size, member.offset_data, extents)
    area = getattr(member, "data_end", -1) - member.offset_data
    if area != _blocks(layout.stored):
        raise bad_entry(
            layer, name, f"has {layout.stored} bytes of data in {max(area, 0)} bytes of blocks"
        )
    return layout


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
