"""eStargz layers: what a lazy reader needs from one, checked at every step.

An eStargz layer (stargz-snapshotter's ``docs/estargz.md``) is an ordinary
gzip layer whose members are cut so that every regular file (or every chunk
of a large one) can be fetched and inflated on its own, with a table of
contents near the end.  Reading one lazily goes:

1. ``toc_digest(annotations)`` of the layer's descriptor.  Without it a
   layer is read as plain gzip, footer or not: an unverifiable TOC is no TOC.
2. ``parse_footer(tail, blob_size)`` on the blob's last bytes (ask for
   ``SUGGESTED_TAIL_SIZE``), giving the TOC member's place; ``toc_member``
   cuts it out of the tail when the tail reaches back that far, else the
   caller reads that range.
3. ``read_toc(member, ...)`` inflates the member (bounded), takes the
   ``stargz.index.json`` tar entry from it, checks its digest against the
   annotation, and parses it (``lazyfs.index.estargz_toc``).
4. ``prefetch_span(toc)``: the range of the blob to fetch at mount, from the
   prefetch landmark.
5. ``inflate_chunk(chunk, data, ...)`` for each chunk read: inflates it from
   the blob bytes ``[chunk.offset, chunk.end)`` and returns it only if its
   ``chunkDigest`` matches.

``is_stargz_own(path)`` names the entries eStargz adds to a layer (the TOC
and the landmarks), which a tree built from its TOC hides, as
stargz-snapshotter does.  A layer pulled whole is an ordinary gzip layer,
indexed and unpacked from its tar by every backend: its own entries show
there, as docker, containerd's overlayfs snapshotter and ``umoci unpack``
show them, and all backends give that one tree.

Pure: no I/O; safe from any thread.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from lazyfs.index.estargz_footer import (
    SUGGESTED_TAIL_SIZE,
    Footer,
    inflate_member,
    inflate_prefix,
    parse_footer,
    toc_member,
)
from lazyfs.index.estargz_toc import Chunk, EntryType, Toc, TocEntry, TocLimits, parse_toc
from providers.digest import Digest, algorithm, digest_bytes, parse_digest
from providers.errors import BadImage, DigestMismatch
from providers.layer_rules import RelPath
from providers.manifest import TOC_DIGEST_ANNOTATION

__all__ = [
    "SUGGESTED_TAIL_SIZE",
    "Chunk",
    "EntryType",
    "Footer",
    "Toc",
    "TocEntry",
    "TocLimits",
    "inflate_chunk",
    "is_stargz_own",
    "parse_footer",
    "prefetch_span",
    "read_toc",
    "toc_digest",
    "toc_json",
    "toc_member",
]

# ctr-remote also writes the length of the uncompressed tar stream.
UNCOMPRESSED_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
TOC_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
_OWN_PATHS = frozenset({(TOC_NAME,), (PREFETCH_LANDMARK,), (NO_PREFETCH_LANDMARK,)})

_BLOCK = 512
# The tar around the JSON: its header, padding, and the two end-of-archive blocks.
_TAR_OVERHEAD = 4 * _BLOCK


def toc_digest(annotations: Mapping[str, str]) -> Digest | None:
    """The TOC digest a layer descriptor's annotations promise, or None.

    Raises BadImage when the annotation is there but is not a digest.
    """
    text = annotations.get(TOC_DIGEST_ANNOTATION)
    if text is None:
        return None
    try:
        return parse_digest(text)
    except BadImage as error:
        raise BadImage(f"the {TOC_DIGEST_ANNOTATION} annotation {text!r} is no digest") from error


def is_stargz_own(path: RelPath) -> bool:
    """Whether ``path`` is an entry eStargz adds to a layer rather than a file of the image."""
    return path in _OWN_PATHS


def _octal(field: bytes) -> int | None:
    digits = field.strip(b"\0 ")
    if not digits or not set(digits) <= set(b"01234567"):
        return None
    return int(digits, 8)


def _toc_json(tar: bytes, layer: str) -> bytes:
    """The content of the tar entry ``stargz.index.json`` that ``tar`` starts with.

    Parsed by hand: the writers put a plain ustar header there, and the tar
    parsers have no business in a process that only reads TOCs.
    """
    header = tar[:_BLOCK]
    if len(header) < _BLOCK:
        raise BadImage(f"layer {layer}: its TOC member holds no tar header")
    checksum = _octal(header[148:156])
    if checksum != sum(header[:148]) + 8 * ord(" ") + sum(header[156:]):
        raise BadImage(f"layer {layer}: its TOC member starts with no valid tar header")
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:265] == b"ustar\x0000" else b""
    if name != TOC_NAME.encode() or prefix or header[156:157] not in (b"0", b"\0"):
        raise BadImage(f"layer {layer}: its TOC member holds {name!r}, not the file {TOC_NAME}")
    size = _octal(header[124:136])
    if size is None or _BLOCK + size > len(tar):
        raise BadImage(f"layer {layer}: its TOC member is cut short")
    return tar[_BLOCK : _BLOCK + size]


def toc_json(member: bytes, *, layer: str, limits: TocLimits | None = None) -> bytes:
    """The TOC's JSON held by the gzip ``member``, unchecked and unparsed.

    What a TOC digest is the digest of.  Raises BadImage when the member or
    its tar entry is refused (sizes bounded by ``limits``).
    """
    limits = limits or TocLimits()
    tar = inflate_member(
        member, limit=limits.max_json_bytes + _TAR_OVERHEAD, what=f"the TOC of layer {layer}"
    )
    return _toc_json(tar, layer)


def read_toc(
    member: bytes, *, toc_offset: int, expected: Digest, layer: str, limits: TocLimits | None = None
) -> Toc:
    """The TOC held by the gzip ``member`` that starts at ``toc_offset`` in layer ``layer``.

    ``expected`` is the annotation's digest of the TOC's JSON.  Raises
    DigestMismatch when the JSON is not what it promises, and BadImage when
    the member, its tar entry or the JSON is refused (sizes bounded by
    ``limits``) — before any of the JSON is parsed, its digest has matched.
    """
    limits = limits or TocLimits()
    data = toc_json(member, layer=layer, limits=limits)
    actual = digest_bytes(data, algorithm(expected))
    if actual != expected:
        raise DigestMismatch(f"TOC of layer {layer}", expected=expected, actual=actual)
    return parse_toc(data, toc_offset=toc_offset, layer=layer, limits=limits)


def prefetch_span(toc: Toc) -> tuple[int, int] | None:
    """``(start, end)`` of the blob to fetch when the layer is mounted, or None.

    A prefetch landmark ends the prioritized files: everything before its
    bytes is fetched, in one range.  A no-prefetch landmark, or no landmark
    at all, means no prefetch; with both, no-prefetch wins.
    """
    span = None
    for entry in toc.entries:
        if entry.path == (NO_PREFETCH_LANDMARK,):
            return None
        if entry.path == (PREFETCH_LANDMARK,) and entry.chunks:
            span = (0, entry.chunks[0].offset)
    return span


# What a chunk's gzip member may take beyond the bytes it inflates to: its header (10
# bytes, and up to 64 KiB of extra field; a name or comment of more is not allowed
# for), and what deflate adds to bytes it cannot shrink: zlib at its least memory 4%,
# ISA-L at level 0 23%, a writer flushing every 100 bytes 10%. A quarter and 128 KiB
# cover those. What follows the member up to the next chunk (other entries' headers,
# or padding a hostile TOC put there: its room is not bounded) is never needed.
_MEMBER_SLACK = 128 << 10


def read_length(chunk: Chunk) -> int:
    """How much of the blob from ``chunk.offset`` reading ``chunk`` takes: up to its
    ``end``, but no more than its gzip member can need to inflate to its bytes."""
    need = chunk.inner_offset + chunk.chunk_size
    return min(chunk.end - chunk.offset, need + need // 4 + _MEMBER_SLACK)


def inflate_chunk(chunk: Chunk, data: bytes, *, layer: str, name: str) -> bytes:
    """The ``chunk_size`` bytes of ``chunk``, inflated and checked against its digest.

    ``data`` is the blob from ``chunk.offset`` on, at least its first
    ``read_length(chunk)`` bytes.
    ``name`` is the file's name, for the error.  Raises DigestMismatch when the
    bytes do not inflate, inflate to too little, or have another digest:
    nothing unverified comes back.
    """
    what = f"chunk {chunk.chunk_offset}+{chunk.chunk_size} of {name!r} in layer {layer}"
    need = chunk.inner_offset + chunk.chunk_size
    try:
        stream = inflate_prefix(data, need)
    except zlib.error as error:
        raise DigestMismatch(
            what, expected=chunk.chunk_digest, actual=f"bytes that do not inflate ({error})"
        ) from None
    if len(stream) < need:
        raise DigestMismatch(
            what, expected=chunk.chunk_digest, actual=f"{len(stream)} of {need} bytes"
        )
    content = stream[chunk.inner_offset :]
    actual = digest_bytes(content, algorithm(chunk.chunk_digest))
    if actual != chunk.chunk_digest:
        raise DigestMismatch(what, expected=chunk.chunk_digest, actual=actual)
    return content
