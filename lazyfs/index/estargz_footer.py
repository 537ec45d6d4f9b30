"""The end of an eStargz blob: its footer, and the gzip member that holds its TOC.

An eStargz blob is a gzip stream of many members.  Its last member is an
empty one, the *footer*, whose gzip Extra field says where the member holding
the table of contents (TOC) starts.  Two footers exist:

- eStargz (51 bytes): a proper RFC 1952 Extra subfield ``SG``::

      1f 8b 08 04 MTIME(4) XFL OS | XLEN=26 | 'S' 'G' | LEN=22
      | "%016x" % toc_offset "STARGZ" | 01 00 00 ff ff | CRC32=0 ISIZE=0

- stargz, its predecessor from CRFS (47 bytes): the same without the
  subfield header, ``XLEN=22`` followed directly by the 22 bytes.

``parse_footer`` looks at the last bytes of a blob (any tail of it, so a
reader can ask for a generous tail and often get the TOC in the same range
request) and says whether the blob is (e)stargz and where its TOC lies;
``toc_member`` cuts the TOC member out of such a tail when the tail reaches
back far enough.  ``inflate_member`` and ``inflate_prefix`` decode one gzip
member with a bound on the output, so a small hostile member cannot expand
into gigabytes.

Pure: no I/O; safe from any thread.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from providers.errors import BadImage

if TYPE_CHECKING:
    from isal.isal_zlib import Decompress

FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
# The footer, and the whole TOC of a small layer. A bigger TOC is a second
# read (the footer says where it starts): a generous tail would move more
# bytes than most TOCs hold (1 MiB for a TOC of 84 KB), on a link that a
# first start waits on.
SUGGESTED_TAIL_SIZE = 64 << 10

_GZIP_ID = b"\x1f\x8b\x08"  # magic and CM=deflate
_FLAGS_EXTRA_ONLY = 0x04  # FEXTRA; any other flag would move the fields below
_MAGIC = b"STARGZ"
_HEX_DIGITS = frozenset(b"0123456789abcdef")
# A final stored block of length 0, then the trailer of an empty member.
_EMPTY_DEFLATE = b"\x01\x00\x00\xff\xff"
_EMPTY_TRAILER = bytes(8)
# The most deflate expands anything: 258 bytes per 2-bit code, so 1032:1.
MAX_DEFLATE_RATIO = 1032


@dataclass(frozen=True, slots=True)
class Footer:
    """Where the TOC member of an (e)stargz blob lies: ``[toc_offset, toc_end)``.

    ``size`` is the footer's length (51, or 47 for a ``legacy`` stargz footer);
    ``toc_end`` is where the footer starts.
    """

    toc_offset: int
    toc_end: int
    size: int
    legacy: bool


def _offset_field(field: bytes) -> int | None:
    """The TOC offset written as ``%016xSTARGZ``, or None if ``field`` is not that."""
    if len(field) != 22 or field[16:] != _MAGIC:
        return None
    digits = field[:16]
    if not set(digits) <= _HEX_DIGITS:
        return None
    return int(digits, 16)


def _footer_offset(footer: bytes, legacy: bool) -> int | None:
    if footer[:3] != _GZIP_ID or footer[3] != _FLAGS_EXTRA_ONLY:
        return None
    if footer[-13:-8] != _EMPTY_DEFLATE or footer[-8:] != _EMPTY_TRAILER:
        return None
    xlen = int.from_bytes(footer[10:12], "little")
    if legacy:
        return _offset_field(footer[12:34]) if xlen == 22 else None
    if xlen != 26 or footer[12:14] != b"SG" or int.from_bytes(footer[14:16], "little") != 22:
        return None
    return _offset_field(footer[16:38])


def parse_footer(tail: bytes, blob_size: int) -> Footer | None:
    """The footer at the end of a blob of ``blob_size`` bytes whose last bytes are ``tail``.

    None when the blob ends in no (e)stargz footer: it is a plain gzip (or
    other) blob.  The eStargz footer is tried first, then the stargz one.
    Raises BadImage when a footer is there but points outside the blob, and
    ValueError when ``tail`` is longer than the blob.
    """
    if len(tail) > blob_size:
        raise ValueError(f"a tail of {len(tail)} bytes from a blob of {blob_size}")
    for size, legacy in ((FOOTER_SIZE, False), (LEGACY_FOOTER_SIZE, True)):
        if len(tail) < size:
            continue
        offset = _footer_offset(tail[-size:], legacy)
        if offset is None:
            continue
        toc_end = blob_size - size
        if offset >= toc_end:
            raise BadImage(
                f"stargz footer puts the TOC at {offset}, outside the {toc_end} bytes before it"
            )
        return Footer(offset, toc_end, size, legacy)
    return None


def toc_member(tail: bytes, blob_size: int, footer: Footer) -> bytes | None:
    """The TOC member cut out of ``tail`` (the blob's last bytes), or None if
    the tail does not reach back to it and the caller must read
    ``[footer.toc_offset, footer.toc_end)`` of the blob."""
    start = footer.toc_offset - (blob_size - len(tail))
    if start < 0:
        return None
    return tail[start : len(tail) - footer.size]


def inflate_member(data: bytes, *, limit: int, what: str) -> bytes:
    """The whole content of the gzip member that is ``data``, checked by its CRC.

    Raises BadImage, naming ``what``, when the member inflates to more than
    ``limit`` bytes, is corrupt, or does not end within ``data``.  Bytes after
    the member are ignored.
    """
    inflater, isal_error = _isal_inflater()
    try:
        out = inflater.decompress(data, limit + 1)
    except isal_error as error:
        raise BadImage(f"{what} is not a valid gzip member: {error}") from error
    if len(out) > limit:
        raise BadImage(f"{what} inflates to more than {limit} bytes")
    if not inflater.eof:
        raise BadImage(f"{what} is a gzip member cut short after {len(data)} bytes")
    return out


def inflate_prefix(data: bytes, length: int) -> bytes:
    """The first ``length`` bytes of the gzip member at the start of ``data``.

    Fewer when the member (or ``data``) ends first.  The member's CRC is not
    checked (its end may be far away): the caller checks a digest of what it
    takes.  Raises zlib.error on corrupt input.

    Inflated by ISA-L (``isal``), in about half zlib's time: a 4 MiB chunk
    is read whole to serve any byte of it, as a program starts. Loaded
    here, not with the module, which a mount of local layers loads too.
    """
    inflater, isal_error = _isal_inflater()
    try:
        return inflater.decompress(data, length)
    except isal_error as error:
        raise zlib.error(str(error)) from None


def _isal_inflater() -> tuple[Decompress, type[Exception]]:
    """A gzip member's inflater from ISA-L, and the class of the errors it raises."""
    from isal import isal_zlib  # loaded by eStargz reads alone (see ``inflate_prefix``)

    # isal's stubs declare its error class as an instance of Exception.
    error: type[Exception] = isal_zlib.error  # type: ignore[assignment]
    return isal_zlib.decompressobj(wbits=31), error
