"""LayerIndex: the table of contents of one layer blob.

An index lists every entry of a layer's tar stream in archive order: path,
kind, mode, owner, size, mtime (to the nanosecond), link target, device
numbers, xattrs, and for regular files where their bytes start in the
*uncompressed* tar stream, with the data extents of GNU sparse files.
Whiteouts and opaque markers stay in the index as markers
(``Kind.WHITEOUT`` naming the hidden path, ``Kind.OPAQUE`` naming the
directory), so the merged tree applies the same rules
(``providers.layer_rules``) as the extracting backends; AUFS bookkeeping
entries are dropped.

Where those offsets are read (the blob, a tar copy, the blob through gzip
checkpoints) is the layer's format's to say: ``lazyfs.index.formats``.

Values and text only, no I/O: ``lazyfs.index.stored`` keeps indexes in the
store and ``lazyfs.index.formats`` builds them.
"""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from providers import untrusted_json
from providers.digest import Digest
from providers.extents import Extent
from providers.layer_entry import EntryKind, LayerEntry
from providers.layer_rules import Action, RelPath

if TYPE_CHECKING:
    from providers.extents import FileLayout

# 2: gzip layers are read through checkpoints (gzip-index), no longer a tar copy.
# 3: a header line before the entries, so the header reads without them.
# 4: GNU sparse files carry their extents; format 3 served their raw tar bytes.
# 5: entries as providers.layer_entry classifies them (xattrs, devices, times).
FORMAT_VERSION = 5
INDEX_NAME = "index.json"
TAR_NAME = "tar"
CHECKPOINTS_NAME = "gzip-index"
CHUNKS_NAME = "estargz-chunks"
# Least bytes of text per array of rows from elsewhere (``loads(max_entries=)``): a row
# is some 40 bytes or more holding three or four arrays; an xattr's or extent's is 8.
ROW_BYTES_PER_CONTAINER = 6


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    WHITEOUT = "whiteout"
    OPAQUE = "opaque"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One entry of a layer.

    ``path`` is rootfs-relative (() is the root); for WHITEOUT it is the
    hidden path, for OPAQUE the directory whose lower children are hidden.
    ``mode`` holds the permission bits only (0o7777).  ``target`` is the
    symlink target as written, or the hardlink's target path joined by "/".
    ``offset`` is where a regular file's bytes start in the uncompressed tar
    stream (in an eStargz index, in the layer's data space:
    ``lazyfs.index.estargz_chunks``; 0 for other kinds); ``size`` is 0 except for files, and holes
    included for sparse ones.  ``extents`` is None but for a GNU sparse
    file: its data extents (``providers.tar_sparse``), stored back to back
    from ``offset``; everything else of it reads as zeros.
    """

    path: RelPath
    kind: Kind
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    offset: int = 0
    extents: tuple[Extent, ...] | None = None


@dataclass(frozen=True, slots=True)
class LayerIndex:
    """The entries of the layer ``digest``, in archive order.

    ``compression`` names the blob's format (``lazyfs.index.formats``: "none",
    "gzip", "zstd", "estargz");
    ``tar_size`` the length of the uncompressed tar stream (for "estargz",
    of the layer's file data laid end to end: see ``lazyfs.index.estargz_chunks``);
    ``checkpoints_size`` the length of the file kept beside the index to read
    it at random: gzip checkpoints, or an eStargz chunk table (0 for others).
    """

    digest: Digest
    compression: str
    tar_size: int
    entries: tuple[IndexEntry, ...]
    checkpoints_size: int = 0


@dataclass(frozen=True, slots=True)
class LayerData:
    """Where a layer's uncompressed tar stream is read from.

    ``path`` is a tar file read directly (the blob of a plain layer, the
    store's copy of a zstd one), or with ``checkpoints`` the gzip blob those
    checkpoints index, or with ``chunks`` the chunk table of an eStargz
    layer, whose blob is read by range through a ``BlobSource``
    (``lazyfs.blobs.estargz_reader``).  Made by a ``LayerFormat.layer_data``.
    """

    path: Path
    checkpoints: Path | None = None
    chunks: bool = False


# -- serialization --------------------------------------------------------------
# JSON: readable when debugging a mount, and fast enough to load at mount
# time; names keep their undecodable bytes through surrogate escapes, which
# json writes as \udcXX and reads back unchanged.


def _entry_to_json(entry: IndexEntry) -> list[Any]:
    return [
        "/".join(entry.path),
        entry.kind.value,
        entry.mode,
        entry.uid,
        entry.gid,
        entry.size,
        entry.mtime_ns,
        entry.target,
        list(entry.rdev),
        [[name, base64.b64encode(value).decode("ascii")] for name, value in entry.xattrs],
        entry.offset,
        None if entry.extents is None else [list(extent) for extent in entry.extents],
    ]


_KIND_OF = {kind.value: kind for kind in Kind}  # Kind(value) costs an enum lookup each


def _entry_from_json(row: list[Any]) -> IndexEntry:
    path, kind, mode, uid, gid, size, mtime_ns, target, rdev, xattrs, offset, extents = row
    # Positional, in IndexEntry's order: keywords cost more, once per entry.
    return IndexEntry(
        tuple(path.split("/")) if path else (),
        _KIND_OF[kind],  # KeyError (TypeError, unhashable) for no kind: loads' ValueError
        int(mode),
        int(uid),
        int(gid),
        int(size),
        int(mtime_ns),
        str(target),
        (int(rdev[0]), int(rdev[1])),
        () if xattrs == [] else tuple((str(n), base64.b64decode(v)) for n, v in xattrs),
        int(offset),
        None if extents is None else tuple((int(a), int(b), int(c)) for a, b, c in extents),
    )


def dumps(index: LayerIndex) -> str:
    """The index as text: a JSON header line, then a JSON line of entries.

    ``loads`` gives it back equal.  The header comes first so that a caller
    needing only where the bytes are (``load_index(..., entries=False)``)
    reads one short line, not every entry of the layer.
    """
    entries = [_entry_to_json(entry) for entry in index.entries]
    return f"{header_line(index)}\n{json.dumps(entries, separators=(',', ':'))}\n"


def header_line(index: LayerIndex) -> str:
    """The first line ``dumps`` writes for ``index``, without its newline."""
    header = {
        "version": FORMAT_VERSION,
        "digest": index.digest,
        "compression": index.compression,
        "tar_size": index.tar_size,
        "checkpoints_size": index.checkpoints_size,
        "entries": len(index.entries),
    }
    return json.dumps(header)


def loads(text: str, *, entries: bool = True, max_entries: int | None = None) -> LayerIndex:
    """Parse ``dumps`` output; ValueError when it is not a current index.

    With ``entries=False`` only the header line is parsed and the index
    comes back with no entries. ``max_entries`` (for an index from
    elsewhere): refused if its header counts more, or its rows are denser
    in arrays than real ones (``ROW_BYTES_PER_CONTAINER``), before the rows
    are parsed, and if the rows are not that many, after.
    """
    head, _, rest = text.partition("\n")
    try:
        header = untrusted_json.loads(head)
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"index format {header.get('version')!r}, want {FORMAT_VERSION}")
        if max_entries is not None and entries:
            _bounded(header["entries"], max_entries)
        if not entries:
            rows = []
        elif max_entries is None:  # the store's own
            rows = untrusted_json.loads(rest)
        else:  # from elsewhere: not denser in arrays than real rows
            rows = untrusted_json.loads(rest, per_container=ROW_BYTES_PER_CONTAINER)
        if entries and len(rows) != header["entries"]:
            raise ValueError(f"index has {len(rows)} entries, its header {header['entries']}")
        return LayerIndex(
            digest=Digest(header["digest"]),
            compression=str(header["compression"]),
            tar_size=int(header["tar_size"]),
            entries=tuple(_entry_from_json(row) for row in rows),
            checkpoints_size=int(header["checkpoints_size"]),
        )
    except (
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        OverflowError,
    ) as error:
        # OverflowError: a number JSON reads as infinite (1e999), made an int.
        raise ValueError(f"malformed layer index: {error!r}") from error


def _bounded(count: object, most: int) -> None:
    """ValueError unless ``count`` entries are at most ``most``."""
    if type(count) is not int or not 0 <= count <= most:
        raise ValueError(f"an index of {count!r} entries, past {most}")


_KINDS = {kind: Kind(kind.value) for kind in EntryKind}

# IndexEntry's fields, in its order: what written_values gives.
EntryValues = tuple[
    RelPath,
    Kind,
    int,
    int,
    int,
    int,
    int,
    str,
    tuple[int, int],
    tuple[tuple[str, bytes], ...],
    int,
    tuple[Extent, ...] | None,
]


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
    # Positional: keywords cost more, once per entry.
    return IndexEntry(*written_values(entry, layout=layout))


def written_values(entry: LayerEntry, *, layout: FileLayout | None) -> EntryValues:
    """The fields of ``index_entry`` of a member that writes, in IndexEntry's order.

    Apart so that a check holding an entry to what a scan gives compares
    them with its fields without making an IndexEntry: a frozen dataclass
    costs a microsecond to make, and the check runs once per entry of a
    published index on a lazy start's path (``lazyfs.index.artifact_entries``).
    """
    assert entry.kind is not None  # written entries have one
    kind = _KINDS[entry.kind]
    return (
        entry.rule.path,
        kind,
        entry.mode,
        entry.uid,
        entry.gid,
        layout.size if layout else 0,
        entry.mtime_ns,
        "/".join(entry.link) if kind is Kind.HARDLINK else entry.target,
        entry.rdev,
        entry.xattrs,
        layout.offset if layout else 0,
        layout.extents if layout else None,
    )
