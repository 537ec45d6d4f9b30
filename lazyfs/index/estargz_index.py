"""An eStargz layer indexed from its footer and TOC alone, read by range through a ``BlobSource``.

``build_remote_index(layer, blobs, expected)``:

1. reads the blob's last ``tail`` bytes (``SUGGESTED_TAIL_SIZE``: one range
   read holds the footer and, for most layers, the whole TOC member) and,
   only when the TOC member starts before them, one more read of the bytes
   between the member's start and the tail;
2. checks the TOC against ``expected``, the digest the layer descriptor's
   ``containerd.io/snapshot/stargz/toc.digest`` annotation promises, before
   parsing it (``lazyfs.index.estargz.read_toc``);
3. turns every TOC entry into the tar member it stands for and classifies
   it with ``providers.layer_entry``, as a tar scan does
   (``lazyfs.index.build``), so names, xattrs, devices, owners and times are
   accepted, dropped or refused exactly as for the same layer pulled whole;
   eStargz's own entries (the landmarks) are left out, as stargz-snapshotter
   hides them;
4. lays the regular files' bytes out in the layer's data space and maps it
   onto their chunks (``lazyfs.index.estargz_chunks``).

What the TOC cannot give: mtimes finer than its ``modtime`` (ctr-remote
writes whole seconds; the nanoseconds stay in the blob's tar headers), and
GNU sparse layouts (eStargz stores a sparse file's holes as zeros).

Blocking (the BlobSource's reads); the rest is pure.
"""

from __future__ import annotations

import decimal
import logging
import tarfile
from collections import Counter

from lazyfs.index.build import index_entry
from lazyfs.index.estargz import (
    SUGGESTED_TAIL_SIZE,
    EntryType,
    Toc,
    TocEntry,
    TocLimits,
    is_stargz_own,
    parse_footer,
    prefetch_span,
    read_toc,
    toc_member,
)
from lazyfs.index.estargz_chunks import ChunkRow, ChunkTable, aligned
from lazyfs.index.formats import ESTARGZ
from lazyfs.index.model import IndexEntry, LayerIndex
from providers.digest import Digest
from providers.errors import BadImage, DigestMismatch
from providers.layer_entry import EntryKind, classify_member
from providers.manifest import Layer
from providers.source import BlobSource
from providers.tar_sparse import FileLayout
from providers.tar_stream import LayerLimits

log = logging.getLogger(__name__)

# Room around a TOC's JSON in its member: tar blocks, and deflate's overhead
# on data it cannot compress.
_MEMBER_SLACK = 1 << 20

_TAR_TYPES = {
    EntryType.REG: tarfile.REGTYPE,
    EntryType.DIR: tarfile.DIRTYPE,
    EntryType.SYMLINK: tarfile.SYMTYPE,
    EntryType.HARDLINK: tarfile.LNKTYPE,
    EntryType.CHAR: tarfile.CHRTYPE,
    EntryType.BLOCK: tarfile.BLKTYPE,
    EntryType.FIFO: tarfile.FIFOTYPE,
}


def _read(blobs: BlobSource, layer: Layer, offset: int, length: int) -> bytes:
    """Exactly ``length`` bytes of the blob at ``offset``; DigestMismatch if it has fewer."""
    data = blobs.read_range(layer.digest, offset, length)
    if len(data) != length:
        raise DigestMismatch(
            f"size of layer {layer.digest}",
            expected=f"{layer.size} bytes",
            actual=f"{offset + len(data)} bytes or fewer",
        )
    return data


def fetch_toc(
    layer: Layer,
    blobs: BlobSource,
    expected: Digest,
    *,
    tail: int = SUGGESTED_TAIL_SIZE,
    limits: TocLimits | None = None,
) -> Toc:
    """The TOC of the eStargz blob of ``layer``, read by range and checked against ``expected``.

    One range read of the blob's last ``tail`` bytes, and a second only when
    the TOC member starts before them.  Raises BadImage when the blob ends
    in no (e)stargz footer or its TOC is refused, DigestMismatch when the
    TOC is not the one ``expected`` names or the blob is shorter than its
    descriptor says, and what ``blobs.read_range`` raises.
    """
    limits = limits or TocLimits()
    size, name = layer.size, str(layer.digest)
    start = max(0, size - max(tail, 1))
    end_bytes = _read(blobs, layer, start, size - start)
    footer = parse_footer(end_bytes, size)
    if footer is None:
        raise BadImage(
            f"layer {name}: its descriptor gives a TOC digest, but its blob ends in no"
            " eStargz footer"
        )
    member = toc_member(end_bytes, size, footer)
    if member is None:
        missing = start - footer.toc_offset
        if missing + len(end_bytes) > limits.max_json_bytes + _MEMBER_SLACK:
            raise BadImage(f"layer {name}: its TOC member is over {limits.max_json_bytes} bytes")
        head = _read(blobs, layer, footer.toc_offset, missing)
        member = head + end_bytes[: len(end_bytes) - footer.size]
    return read_toc(
        member, toc_offset=footer.toc_offset, expected=expected, layer=name, limits=limits
    )


def _member(entry: TocEntry) -> tarfile.TarInfo:
    """The tar member the TOC entry stands for, as tarfile would have read it from the blob."""
    # tarfile drops a directory's trailing slashes when it reads a header.
    info = tarfile.TarInfo(entry.name.rstrip("/") if entry.type is EntryType.DIR else entry.name)
    info.type = _TAR_TYPES[entry.type]
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.size = entry.size if entry.type is EntryType.REG else 0
    info.mtime = entry.mtime_ns // 1_000_000_000
    info.linkname = entry.link_name
    info.devmajor, info.devminor = entry.devices
    pax = {"mtime": str(decimal.Decimal(entry.mtime_ns).scaleb(-9))}
    for key, value in entry.xattrs:
        # As tarfile decodes a binary pax value; providers.tar_stream undoes it.
        pax[f"SCHILY.xattr.{key}"] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    return info


def _rows(entry: TocEntry, start: int) -> list[ChunkRow]:
    """The chunks of the file ``entry`` whose bytes start at ``start`` of the data space."""
    return [
        ChunkRow(
            start=start + chunk.chunk_offset,
            size=chunk.chunk_size,
            offset=chunk.offset,
            end=chunk.end,
            inner_offset=chunk.inner_offset,
            chunk_offset=chunk.chunk_offset,
            digest=chunk.chunk_digest,
            name=entry.name,
        )
        for chunk in entry.chunks
    ]


def index_toc(
    layer: Layer, toc: Toc, toc_digest: Digest, *, limits: LayerLimits | None = None
) -> tuple[LayerIndex, ChunkTable]:
    """The index of ``layer`` made from its verified ``toc``, and its chunk table.

    The index's ``checkpoints_size`` is left 0 for the caller, which knows
    the size of the table as it stores it.  Raises BadImage or UnsafeLayer
    as indexing the layer's tar would, and BadImage when the files hold
    more than ``limits`` (default ``LayerLimits()``) let the blob unpack to.
    """
    name = str(layer.digest)
    entries: list[IndexEntry] = []
    rows: list[ChunkRow] = []
    dropped: Counter[str] = Counter()
    position = total = 0
    for toc_entry in toc.entries:
        if is_stargz_own(toc_entry.path):
            continue
        classified = classify_member(_member(toc_entry), layer=name)
        dropped.update(classified.dropped)
        layout = None
        if classified.kind is EntryKind.FILE:
            start = aligned(position) if toc_entry.size else position
            layout = FileLayout(toc_entry.size, start)
            rows.extend(_rows(toc_entry, start))
            position = start + toc_entry.size
            total += toc_entry.size
        entry = index_entry(classified, layout=layout)
        if entry is not None:
            entries.append(entry)
    (limits or LayerLimits()).check(name, total, layer.size)
    for what, number in sorted(dropped.items()):
        log.warning("layer %s: dropped %d %s", name, number, what)
    table = ChunkTable(layer.digest, toc_digest, layer.size, tuple(rows), prefetch_span(toc))
    return LayerIndex(layer.digest, ESTARGZ.name, position, tuple(entries)), table


def build_remote_index(
    layer: Layer,
    blobs: BlobSource,
    expected: Digest,
    *,
    tail: int = SUGGESTED_TAIL_SIZE,
    limits: LayerLimits | None = None,
) -> tuple[LayerIndex, ChunkTable]:
    """``fetch_toc`` then ``index_toc``: the index of an eStargz layer not on this machine."""
    toc = fetch_toc(layer, blobs, expected, tail=tail)
    return index_toc(layer, toc, expected, limits=limits)
