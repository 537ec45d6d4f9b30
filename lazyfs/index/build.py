"""The steps of an index build: one pass over a layer blob, one header scan.

``lazyfs.index.formats`` puts them together per kind of blob:

- ``scan_in_place``: a plain tar blob, tar headers only, seeking over file
  data, so the cost is the number of entries;
- ``scan_with_checkpoints``: a gzip blob's tar stream scanned as it is
  decompressed, with checkpoints made alongside
  (``lazyfs.index.gzip_checkpoints``); no uncompressed copy;
- ``copy_decompressed`` then ``scan_tar``: a zstd blob decompressed once
  into a tar copy, scanned there.

Compressed blobs are read through ``providers.compression.decompressed``,
the decompressor ``backends.apply`` uses, so both accept the same bytes.
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

from lazyfs.index.gzip_checkpoints import Checkpointer
from lazyfs.index.model import IndexEntry, index_entry
from providers.compression import decompressed, sniff
from providers.digest import Digest
from providers.errors import BadImage
from providers.layer_entry import EntryKind, classify_member
from providers.private_dir import private_file
from providers.tar_stream import (
    CHUNK,
    MAX_ENTRIES,
    CheckedTarInfo,
    LayerLimits,
    LayerReader,
    file_layout,
)

log = logging.getLogger(__name__)


def scan_in_place(
    digest: Digest, blob: Path, *, limits: LayerLimits | None
) -> tuple[tuple[IndexEntry, ...], int]:
    """The entries of the plain tar blob ``blob``, and its length: its headers only are read.

    BadImage for a blob compressed in a way no layer format reads (bzip2, xz).
    """
    with blob.open("rb") as stream:
        compression = sniff(stream.read(8))
        size = os.fstat(stream.fileno()).st_size
    if compression != "none":
        raise BadImage(f"bad layer {digest}: unsupported compression {compression}")
    (limits or LayerLimits()).check(str(digest), size, size)
    return scan_tar(blob, layer=str(digest)), size


def copy_decompressed(digest: Digest, blob: Path, out: Path, *, limits: LayerLimits | None) -> int:
    """Write the tar stream of the compressed blob ``blob`` to ``out``; its length."""
    with blob.open("rb") as raw, private_file(out) as sink:
        # LayerReader turns corrupt compressed data into BadImage, as for apply.
        stream = LayerReader(
            decompressed(raw),
            str(digest),
            limits=limits,
            compressed_size=os.fstat(raw.fileno()).st_size,
        )
        while chunk := stream.read(CHUNK):
            sink.write(chunk)
        return sink.tell()


def scan_with_checkpoints(
    digest: Digest, blob: Path, *, spacing: int, limits: LayerLimits | None
) -> tuple[tuple[IndexEntry, ...], int, bytes]:
    """Scan the gzip blob ``blob`` as it is decompressed, checkpointing it on the way.

    Returns the entries, the tar stream's length and the exported checkpoints.
    """
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
        return entries, tar_size, points.export(tar_size)


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
