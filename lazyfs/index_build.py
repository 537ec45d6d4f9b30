"""Build a LayerIndex from a layer blob: one decompressing pass, one header scan.

A compressed blob is first decompressed, once, into ``tar_out`` (the caller
renames it into the store); a plain tar blob is scanned in place.  The scan
reads tar headers only and seeks over file data, so its cost is the number
of entries, not the layer's size.

The archive is distrusted as ``backends.apply`` distrusts it, and refused for
the same reasons, so a layer this index accepts is one the extracting
backends accept too: names and whiteouts through ``providers.layer_rules``,
bounded entry counts, sizes, extended headers, owners and mtimes, and a
damaged header is damage, never a quiet end of the archive.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from lazyfs.index import IndexEntry, Kind, LayerIndex
from providers import layer_rules as rules
from providers.compression import decompressed, sniff
from providers.digest import Digest
from providers.errors import BadImage
from providers.tar_stream import (
    CHUNK,
    CheckedTarInfo,
    LayerReader,
    bad_entry,
    pax_mtime_ns,
    pax_xattrs,
)

MAX_ENTRIES = 10_000_000
MAX_ENTRY_SIZE = 1 << 40
MAX_ID = (1 << 32) - 2
_KINDS = {
    tarfile.DIRTYPE: Kind.DIR,
    tarfile.SYMTYPE: Kind.SYMLINK,
    tarfile.LNKTYPE: Kind.HARDLINK,
    tarfile.CHRTYPE: Kind.CHAR,
    tarfile.BLKTYPE: Kind.BLOCK,
    tarfile.FIFOTYPE: Kind.FIFO,
}


def build_index(digest: Digest, blob: Path, tar_out: Path) -> LayerIndex:
    """Index the layer blob ``blob``; for a compressed blob, write its tar to ``tar_out``.

    ``tar_out`` is left untouched for plain tar blobs.  Raises BadImage or
    UnsafeLayer (naming the layer and entry) for layers the backends refuse.
    """
    with blob.open("rb") as stream:
        compression = sniff(stream.read(8))
    if compression not in ("none", "gzip", "zstd"):
        raise BadImage(f"bad layer {digest}: unsupported compression {compression}")
    tar = blob
    if compression != "none":
        _decompress(digest, blob, tar_out)
        tar = tar_out
    entries = scan_tar(tar, layer=str(digest))
    return LayerIndex(digest, compression, tar.stat().st_size, entries)


def _decompress(digest: Digest, blob: Path, out: Path) -> None:
    with blob.open("rb") as raw, out.open("wb") as sink:
        # LayerReader turns corrupt compressed data into BadImage, as for apply.
        stream = LayerReader(decompressed(raw), str(digest))
        while chunk := stream.read(CHUNK):
            sink.write(chunk)


def scan_tar(tar: Path, *, layer: str) -> tuple[IndexEntry, ...]:
    """The entries of the uncompressed tar file ``tar``, in archive order."""
    entries: list[IndexEntry] = []
    try:
        with tarfile.open(tar, mode="r:", tarinfo=CheckedTarInfo) as archive:
            while (member := archive.next()) is not None:
                # tarfile keeps every member; memory would grow with the layer.
                archive.members.clear()  # type: ignore[attr-defined]
                if len(entries) >= MAX_ENTRIES:
                    raise BadImage(f"bad layer {layer}: more than {MAX_ENTRIES} entries")
                entry = index_entry(member, layer=layer)
                if entry is not None:
                    entries.append(entry)
    except (tarfile.TarError, EOFError) as error:
        raise BadImage(f"bad layer {layer}: corrupt or truncated tar: {error}") from error
    return tuple(entries)


def index_entry(member: tarfile.TarInfo, *, layer: str) -> IndexEntry | None:
    """What one tar header says, as an index entry; None for AUFS bookkeeping."""
    name = member.name
    rule = rules.rule_for(name, layer=layer)
    if rule.action is rules.Action.IGNORE:
        return None
    if rule.action is rules.Action.WHITEOUT:
        return IndexEntry(rule.path, Kind.WHITEOUT)
    if rule.action is rules.Action.OPAQUE:
        return IndexEntry(rule.path, Kind.OPAQUE)
    if member.size > MAX_ENTRY_SIZE:
        raise bad_entry(layer, name, f"claims {member.size} bytes")
    if not (0 <= member.uid <= MAX_ID and 0 <= member.gid <= MAX_ID):
        raise bad_entry(layer, name, f"has the owner {member.uid}:{member.gid}")
    if member.isreg():
        kind = Kind.FILE
    elif member.type in _KINDS:
        kind = _KINDS[member.type]
    else:
        raise bad_entry(layer, name, f"has the unsupported tar type {member.type!r}")
    if not rule.path and kind is not Kind.DIR:
        raise bad_entry(layer, name, "is the root but not a directory")
    target = ""
    if kind is Kind.SYMLINK:
        rules.check_symlink_target(member.linkname, layer=layer, entry=name)
        target = member.linkname
    elif kind is Kind.HARDLINK:
        target = "/".join(rules.hardlink_target(member.linkname, layer=layer, entry=name))
    rdev = (0, 0)
    if kind in (Kind.CHAR, Kind.BLOCK):
        if not (0 <= member.devmajor < 1 << 32 and 0 <= member.devminor < 1 << 32):
            raise bad_entry(layer, name, f"has the device {member.devmajor}:{member.devminor}")
        rdev = (member.devmajor, member.devminor)
    is_file = kind is Kind.FILE
    return IndexEntry(
        path=rule.path,
        kind=kind,
        mode=member.mode & 0o7777,
        uid=member.uid,
        gid=member.gid,
        size=member.size if is_file else 0,
        mtime_ns=pax_mtime_ns(member, layer),
        target=target,
        rdev=rdev,
        xattrs=tuple(sorted(pax_xattrs(member, layer).items())),
        offset=member.offset_data if is_file else 0,
    )
