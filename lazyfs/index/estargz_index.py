"""An eStargz layer indexed from its footer and TOC alone, read by range through a ``BlobSource``.

``build_remote_index(layer, blobs, expected)``:

1. reads the blob's last ``tail`` bytes (``SUGGESTED_TAIL_SIZE``: one range
   read holds the footer and, for a small layer, the whole TOC member) and,
   only when the TOC member starts before them, one more read of the bytes
   between the member's start and the tail (or uses a TOC read so before);
2. checks the TOC against ``expected``, the digest the layer descriptor's
   ``containerd.io/snapshot/stargz/toc.digest`` annotation promises, before
   parsing it (``lazyfs.index.estargz.read_toc``);
3. classifies every TOC entry with ``providers.layer_entry`` as the tar
   member it stands for, through the checks a tar scan
   (``lazyfs.index.build``) puts that member to, so names, xattrs,
   devices, owners and times are accepted, dropped or refused exactly as
   for the same layer pulled whole; eStargz's own entries (the TOC's name
   and the landmarks) too, which are then left out, as stargz-snapshotter
   hides them, when they are what eStargz writes: a regular file at the
   layer's root that no hardlink of the layer names.  Anything else of those
   names is a file of the image, as the layer's tar shows it;
4. lays the regular files' bytes out in the layer's data space and maps it
   onto their chunks (``lazyfs.index.estargz_chunks``).

What the TOC cannot give: mtimes finer than its ``modtime`` (ctr-remote
writes whole seconds; the nanoseconds stay in the blob's tar headers), and
GNU sparse layouts (eStargz stores a sparse file's holes as zeros).

Blocking (the BlobSource's reads); the rest is pure.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

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
from lazyfs.index.model import IndexEntry, LayerIndex, index_entry
from providers.digest import Digest
from providers.errors import BadImage, DigestMismatch, bad_entry
from providers.extents import FileLayout
from providers.layer_entry import EntryKind, LayerEntry, classify_fields
from providers.layer_limits import MAX_ENTRY_SIZE, MAX_XATTR_VALUE_BYTES, LayerLimits
from providers.layer_rules import Action, RelPath, classify, hardlink_target
from providers.manifest import Layer
from providers.source import BlobSource, Evicting

log = logging.getLogger(__name__)

Reader = Callable[[Digest, int, int], bytes]  # a blob's bytes by range

# Room around a TOC's JSON in its member: tar blocks, and deflate's overhead
# on data it cannot compress.
_MEMBER_SLACK = 1 << 20

_KINDS = {
    EntryType.REG: EntryKind.FILE,
    EntryType.DIR: EntryKind.DIR,
    EntryType.SYMLINK: EntryKind.SYMLINK,
    EntryType.HARDLINK: EntryKind.HARDLINK,
    EntryType.CHAR: EntryKind.CHAR,
    EntryType.BLOCK: EntryKind.BLOCK,
    EntryType.FIFO: EntryKind.FIFO,
}


def _read(read: Reader, layer: Layer, offset: int, length: int) -> bytes:
    """Exactly ``length`` bytes of the blob at ``offset``; DigestMismatch if it has fewer."""
    data = read(layer.digest, offset, length)
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
    descriptor says, and what ``blobs.read_range`` raises.  From a source
    that keeps what it reads for every origin (``Evicting``: the cache
    daemon's client), such bytes may be another repository's, which named
    this layer's digest: they are dropped and read once more through this
    mount's origin alone before it is refused.
    """
    limits = limits or TocLimits()
    read: list[tuple[int, int]] = []
    try:
        return _fetch_toc(layer, blobs.read_range, expected, tail, limits, read)
    except (BadImage, DigestMismatch) as error:
        if not isinstance(blobs, Evicting):
            raise
        log.warning("layer %s: %s; dropping its TOC from the cache and reading it again",
                    layer.digest, error)  # fmt: skip
        for offset, length in read:
            blobs.evict(layer.digest, offset, length, str(error))
        return _fetch_toc(layer, blobs.read_again, expected, tail, limits, [])


def _fetch_toc(
    layer: Layer,
    read_range: Reader,
    expected: Digest,
    tail: int,
    limits: TocLimits,
    read: list[tuple[int, int]],
) -> Toc:
    """``fetch_toc`` through ``read_range``, noting in ``read`` each range it read."""

    def reader(digest: Digest, offset: int, length: int) -> bytes:
        read.append((offset, length))
        return read_range(digest, offset, length)

    size, name = layer.size, str(layer.digest)
    start = max(0, size - max(tail, 1))
    end_bytes = _read(reader, layer, start, size - start)
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
        head = _read(reader, layer, footer.toc_offset, missing)
        member = head + end_bytes[: len(end_bytes) - footer.size]
    return read_toc(
        member, toc_offset=footer.toc_offset, expected=expected, layer=name, limits=limits
    )


def _classify(entry: TocEntry, layer: str) -> LayerEntry:
    """What the tar member ``entry`` stands for is, as ``classify_member`` would say of it.

    The member tarfile would read from the blob is not built: its values
    go to the same checks (``classify_fields``) straight from the TOC.
    """
    # tarfile drops a directory's trailing slashes when it reads a header.
    name = entry.name.rstrip("/") if entry.type is EntryType.DIR else entry.name
    # entry.path is normalize_name(entry.name): the slashes make no difference.
    rule = classify(entry.path, layer=layer, entry=name)
    if rule.action is not Action.WRITE:
        return LayerEntry(name, rule)
    if entry.size > MAX_ENTRY_SIZE:
        raise bad_entry(layer, name, f"claims {entry.size} bytes")
    kind = _KINDS[entry.type]
    if kind is EntryKind.HARDLINK:
        return classify_fields(name, rule, kind, linkname=entry.link_name, layer=layer)
    xattrs = None
    if entry.xattrs:
        xattrs = {}
        for key, value in entry.xattrs:
            if len(value) > MAX_XATTR_VALUE_BYTES:
                raise bad_entry(layer, name, f"has an xattr of {len(value)} bytes")
            xattrs[key] = value
    return classify_fields(
        name,
        rule,
        kind,
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        mtime_ns=entry.mtime_ns,
        size=entry.size,
        linkname=entry.link_name,
        device=entry.devices,
        xattrs=xattrs,
        layer=layer,
    )


def _linked(toc: Toc, layer: str) -> set[RelPath]:
    """The paths the layer's hardlinks name."""
    return {
        hardlink_target(e.link_name, layer=layer, entry=e.name)
        for e in toc.entries
        if e.type is EntryType.HARDLINK
    }


def _rows(entry: TocEntry, start: int) -> list[ChunkRow]:
    """The chunks of the file ``entry`` whose bytes start at ``start`` of the data space."""
    name = entry.name
    # Positional: keywords cost more, once per chunk.
    return [
        ChunkRow(
            start + c.chunk_offset,
            c.chunk_size,
            c.offset,
            c.end,
            c.inner_offset,
            c.chunk_offset,
            c.chunk_digest,
            name,
        )
        for c in entry.chunks
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
    # An own file that a hardlink of the layer names is shown: hidden, the
    # link would name nothing, where the tar links it to that file.
    linked = _linked(toc, name)
    for toc_entry in toc.entries:
        # Own entries are classified too: refused or accepted as the tar's are.
        classified = _classify(toc_entry, name)
        dropped.update(classified.dropped)
        path = toc_entry.path
        if classified.kind is EntryKind.FILE and is_stargz_own(path) and path not in linked:
            continue
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
    toc: Toc | None = None,
) -> tuple[LayerIndex, ChunkTable]:
    """``fetch_toc`` then ``index_toc``: the index of an eStargz layer not on this machine.

    ``toc``: its TOC as ``fetch_toc`` gave it earlier (checked against
    ``expected`` then), read again only when None.
    """
    if toc is None:
        toc = fetch_toc(layer, blobs, expected, tail=tail)
    return index_toc(layer, toc, expected, limits=limits)
