"""Build a LayerIndex from a layer blob: one pass over it, one header scan.

What the index points into is written to the caller's scratch directory,
under the names ``lazyfs.index.model`` gives (the caller renames it into the
store):

- plain tar: nothing; the blob is scanned in place, tar headers only,
  seeking over file data, so the cost is the number of entries;
- gzip: the tar stream is scanned as it is decompressed, and checkpoints
  are made alongside (``lazyfs.index.gzip_checkpoints``) and written to
  ``CHECKPOINTS_NAME``; no uncompressed copy;
- zstd: the blob is decompressed once into ``TAR_NAME``, then scanned there.

The archive is distrusted as ``backends.apply`` distrusts it, and refused for
the same reasons, so a layer this index accepts is one the extracting
backends accept too: every member is classified by
``providers.layer_entry``, as apply classifies it, and the index holds the
values it gives; entry counts and extended headers are bounded the same way,
and a damaged header is damage, never a quiet end of the archive.
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import BinaryIO

from lazyfs.index.gzip_checkpoints import SPACING, Checkpointer
from lazyfs.index.model import CHECKPOINTS_NAME, TAR_NAME, IndexEntry, Kind, LayerIndex
from providers.compression import decompressed, sniff
from providers.digest import Digest
from providers.errors import BadImage
from providers.layer_entry import EntryKind, LayerEntry, classify_member
from providers.layer_rules import Action
from providers.tar_sparse import FileLayout
from providers.tar_stream import (
    CHUNK,
    MAX_ENTRIES,
    CheckedTarInfo,
    LayerLimits,
    LayerReader,
    file_layout,
)

log = logging.getLogger(__name__)


def build_index(
    digest: Digest,
    blob: Path,
    scratch: Path,
    *,
    spacing: int = SPACING,
    limits: LayerLimits | None = None,
) -> LayerIndex:
    """Index the layer blob ``blob``, writing what the index points into to ``scratch``.

    ``spacing`` is the distance between gzip checkpoints (tests make it
    small).  Raises BadImage or UnsafeLayer (naming the layer and entry)
    for layers the backends refuse, BadImage for one that unpacks past
    ``limits`` (default: ``LayerLimits()``), as apply does.
    """
    limits = limits or LayerLimits()
    with blob.open("rb") as stream:
        compression = sniff(stream.read(8))
        size = os.fstat(stream.fileno()).st_size
    layer = str(digest)
    if compression == "none":
        limits.check(layer, size, size)
        return LayerIndex(digest, compression, size, scan_tar(blob, layer=layer))
    if compression == "zstd":
        tar = scratch / TAR_NAME
        _decompress(digest, blob, tar, limits)
        return LayerIndex(digest, compression, tar.stat().st_size, scan_tar(tar, layer=layer))
    if compression == "gzip":
        return _index_gzip(digest, blob, scratch / CHECKPOINTS_NAME, spacing, limits)
    raise BadImage(f"bad layer {digest}: unsupported compression {compression}")


def _decompress(digest: Digest, blob: Path, out: Path, limits: LayerLimits) -> None:
    with blob.open("rb") as raw, out.open("wb") as sink:
        # LayerReader turns corrupt compressed data into BadImage, as for apply.
        stream = LayerReader(
            decompressed(raw),
            str(digest),
            limits=limits,
            compressed_size=os.fstat(raw.fileno()).st_size,
        )
        while chunk := stream.read(CHUNK):
            sink.write(chunk)


def _index_gzip(
    digest: Digest, blob: Path, out: Path, spacing: int, limits: LayerLimits
) -> LayerIndex:
    layer = str(digest)
    with blob.open("rb") as raw, Checkpointer(blob, layer=layer, spacing=spacing) as points:
        # The scan reads what apply's decompressor accepts (CRCs, truncation,
        # trailing garbage); the checkpointer follows it, see its module.
        stream = LayerReader(
            points.track(decompressed(raw)),
            layer,
            limits=limits,
            compressed_size=os.fstat(raw.fileno()).st_size,
        )
        entries = scan_stream(stream, layer=layer)
        while stream.read(CHUNK):  # the rest: padding, and the CRC checks at the end
            pass
        tar_size = stream.tell()
        exported = points.export(tar_size)
    out.write_bytes(exported)
    return LayerIndex(digest, "gzip", tar_size, entries, checkpoints_size=len(exported))


def scan_tar(tar: Path, *, layer: str) -> tuple[IndexEntry, ...]:
    """The entries of the uncompressed tar file ``tar``, in archive order."""
    with tar.open("rb") as stream:
        return scan_stream(stream, layer=layer)


def scan_stream(stream: BinaryIO | LayerReader, *, layer: str) -> tuple[IndexEntry, ...]:
    """The entries of the tar stream ``stream`` (seekable forward at least), in archive order."""
    entries: list[IndexEntry] = []
    dropped: Counter[str] = Counter()
    try:
        # Closing the archive would close nothing of ours.
        archive = tarfile.open(fileobj=stream, mode="r:", tarinfo=CheckedTarInfo)  # noqa: SIM115
        count = 0
        while (member := archive.next()) is not None:
            # tarfile keeps every member; memory would grow with the layer.
            archive.members.clear()  # type: ignore[attr-defined]
            count += 1
            if count > MAX_ENTRIES:
                raise BadImage(f"bad layer {layer}: more than {MAX_ENTRIES} entries")
            classified = classify_member(member, layer=layer)
            dropped.update(classified.dropped)
            layout = file_layout(member, layer=layer) if classified.kind is EntryKind.FILE else None
            entry = index_entry(classified, layout=layout)
            if entry is not None:
                entries.append(entry)
    except (tarfile.TarError, EOFError) as error:
        raise BadImage(f"bad layer {layer}: corrupt or truncated tar: {error}") from error
    for what, number in sorted(dropped.items()):
        log.warning("layer %s: dropped %d %s", layer, number, what)
    return tuple(entries)


def index_entry(entry: LayerEntry, *, layout: FileLayout | None) -> IndexEntry | None:
    """A classified member as an index entry; None for AUFS bookkeeping.

    ``layout`` (a regular file's only) says where its bytes are in the tar
    stream: its data, and for a sparse file the extents between the holes.
    """
    rule = entry.rule
    if rule.action is Action.IGNORE:
        return None
    if rule.action is Action.WHITEOUT:
        return IndexEntry(rule.path, Kind.WHITEOUT)
    if rule.action is Action.OPAQUE:
        return IndexEntry(rule.path, Kind.OPAQUE)
    assert entry.kind is not None  # written entries have one
    kind = Kind(entry.kind.value)
    return IndexEntry(
        path=rule.path,
        kind=kind,
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        size=layout.size if layout else 0,
        mtime_ns=entry.mtime_ns,
        target="/".join(entry.link) if kind is Kind.HARDLINK else entry.target,
        rdev=entry.rdev,
        xattrs=entry.xattrs,
        offset=layout.offset if layout else 0,
        extents=layout.extents if layout else None,
    )
