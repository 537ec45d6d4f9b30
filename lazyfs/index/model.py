"""LayerIndex: the table of contents of one layer blob, and its place in the store.

An index lists every entry of a layer's tar stream in archive order: path,
kind, mode, owner, size, mtime (to the nanosecond), link target, device
numbers, xattrs, and for regular files where their bytes start in the
*uncompressed* tar stream, with the data extents of GNU sparse files.
Whiteouts and opaque markers stay in the index as markers
(``Kind.WHITEOUT`` naming the hidden path, ``Kind.OPAQUE`` naming the
directory), so the merged tree applies the same rules
(``providers.layer_rules``) as the extracting backends; AUFS bookkeeping
entries are dropped.

Where the bytes are (``layer_data`` is the one place that knows):

- plain tar: the offsets are offsets into the blob itself;
- gzip: the blob stays as it is; ``<layers_dir>/<hex>/gzip-index`` holds
  checkpoints into its compressed stream (``lazyfs.index.gzip_checkpoints``), from
  which any range of the uncompressed stream is decoded on demand;
- zstd: the blob is decompressed once into ``<layers_dir>/<hex>/tar`` and
  the offsets point there.  A layer is one zstd frame as a rule, and a
  frame cannot be entered in the middle, so there is nothing to checkpoint.

``ensure_index`` builds and stores the index once per layer digest, with
what it points into: under an flock, each file written to a scratch
directory and renamed into place, the index last, so a present index.json
implies its tar copy or checkpoint file is complete.  It reads them back on
every later call.  Blocking.
"""

from __future__ import annotations

import base64
import enum
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from providers.digest import Digest, hex_part
from providers.errors import BadImage
from providers.extents import Extent
from providers.fslock import exclusive_lock
from providers.layer_rules import RelPath

if TYPE_CHECKING:
    # Only building an index needs the tar parsers, not a mount process.
    from providers.tar_stream import LayerLimits

# 2: gzip layers are read through checkpoints (gzip-index), no longer a tar copy.
# 3: a header line before the entries, so the header reads without them.
# 4: GNU sparse files carry their extents; format 3 served their raw tar bytes.
# 5: entries as providers.layer_entry classifies them (xattrs, devices, times).
FORMAT_VERSION = 5
INDEX_NAME = "index.json"
TAR_NAME = "tar"
CHECKPOINTS_NAME = "gzip-index"


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
    stream (0 for other kinds); ``size`` is 0 except for files, and holes
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

    ``compression`` is what the blob was ("none", "gzip", "zstd");
    ``tar_size`` the length of the uncompressed tar stream;
    ``checkpoints_size`` the length of the gzip checkpoint file (0 unless gzip).
    """

    digest: Digest
    compression: str
    tar_size: int
    entries: tuple[IndexEntry, ...]
    checkpoints_size: int = 0


@dataclass(frozen=True, slots=True)
class LayerData:
    """Where a layer's uncompressed tar stream is read from.

    ``path`` is a tar file (the blob of a plain layer, the store's copy of a
    zstd one), or with ``checkpoints`` the gzip blob those checkpoints index.
    """

    path: Path
    checkpoints: Path | None = None


def layer_data(layers_dir: Path, blob: Path, index: LayerIndex) -> LayerData:
    """What the index's offsets point into, for the layer blob ``blob``; no I/O."""
    home = layers_dir / hex_part(index.digest)
    if index.compression == "gzip":
        return LayerData(blob, home / CHECKPOINTS_NAME)
    if index.compression == "zstd":
        return LayerData(home / TAR_NAME)
    return LayerData(blob)


def _stored_files(index: LayerIndex) -> tuple[str, ...]:
    """The files beside index.json that the index promises (built into scratch first)."""
    return {"gzip": (CHECKPOINTS_NAME,), "zstd": (TAR_NAME,)}.get(index.compression, ())


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


def _entry_from_json(row: list[Any]) -> IndexEntry:
    path, kind, mode, uid, gid, size, mtime_ns, target, rdev, xattrs, offset, extents = row
    return IndexEntry(
        path=tuple(path.split("/")) if path else (),
        kind=Kind(kind),
        mode=int(mode),
        uid=int(uid),
        gid=int(gid),
        size=int(size),
        mtime_ns=int(mtime_ns),
        target=str(target),
        rdev=(int(rdev[0]), int(rdev[1])),
        xattrs=tuple((str(name), base64.b64decode(value)) for name, value in xattrs),
        offset=int(offset),
        extents=None if extents is None else tuple((int(a), int(b), int(c)) for a, b, c in extents),
    )


def dumps(index: LayerIndex) -> str:
    """The index as text: a JSON header line, then a JSON line of entries.

    ``loads`` gives it back equal.  The header comes first so that a caller
    needing only where the bytes are (``load_index(..., entries=False)``)
    reads one short line, not every entry of the layer.
    """
    header = {
        "version": FORMAT_VERSION,
        "digest": index.digest,
        "compression": index.compression,
        "tar_size": index.tar_size,
        "checkpoints_size": index.checkpoints_size,
        "entries": len(index.entries),
    }
    entries = [_entry_to_json(entry) for entry in index.entries]
    return f"{json.dumps(header)}\n{json.dumps(entries, separators=(',', ':'))}\n"


def loads(text: str, *, entries: bool = True) -> LayerIndex:
    """Parse ``dumps`` output; ValueError when it is not a current index.

    With ``entries=False`` only the header line is parsed and the index
    comes back with no entries.
    """
    head, _, rest = text.partition("\n")
    try:
        header = json.loads(head)
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"index format {header.get('version')!r}, want {FORMAT_VERSION}")
        rows = json.loads(rest) if entries else []
        if entries and len(rows) != header["entries"]:
            raise ValueError(f"index has {len(rows)} entries, its header {header['entries']}")
        return LayerIndex(
            digest=Digest(header["digest"]),
            compression=str(header["compression"]),
            tar_size=int(header["tar_size"]),
            entries=tuple(_entry_from_json(row) for row in rows),
            checkpoints_size=int(header["checkpoints_size"]),
        )
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise ValueError(f"malformed layer index: {error!r}") from error


# -- the store ------------------------------------------------------------------


def index_path(layers_dir: Path, digest: Digest) -> Path:
    return layers_dir / hex_part(digest) / INDEX_NAME


def load_index(layers_dir: Path, digest: Digest, *, entries: bool = True) -> LayerIndex | None:
    """The stored index of ``digest``; None if there is none or it is stale or damaged.

    ``entries=False``: its header only (no entries), read from the first line.
    """
    try:
        with index_path(layers_dir, digest).open(encoding="utf-8") as stream:
            text = stream.read() if entries else stream.readline()
        index = loads(text, entries=entries)
    except (OSError, ValueError):
        return None
    return index if index.digest == digest else None


def ensure_index(
    layers_dir: Path,
    tmp_dir: Path,
    digest: Digest,
    blob: Path,
    *,
    entries: bool = True,
    limits: LayerLimits | None = None,
) -> LayerIndex:
    """The index of the verified layer blob ``blob``, built and stored if missing.

    Rebuilt too when what it points into (``check_data_present``) is gone
    or damaged.  The zstd copy or gzip checkpoints are renamed into place
    before the index that promises them; a gzip layer's tar copy left by
    format 1 is removed.  With ``entries=False`` a stored index is checked
    and returned by its header alone (no entries): what a caller that only
    makes sure the index is there needs.  Raises BadImage for a corrupt
    layer or one that unpacks past ``limits`` (a stored index was built
    within the limits of its day), UnsafeLayer for a hostile one; nothing
    is stored then.
    """
    found = _usable(layers_dir, blob, load_index(layers_dir, digest, entries=entries))
    if found is not None:
        return found
    # Here to keep the build (tarfile, decompressors) out of mount startup.
    from lazyfs.index.build import build_index

    home = layers_dir / hex_part(digest)
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / "lock"):
        found = _usable(layers_dir, blob, load_index(layers_dir, digest))
        if found is not None:  # another process built it while we waited
            return found
        scratch = Path(tempfile.mkdtemp(dir=tmp_dir, prefix=f"{os.getpid()}."))
        try:
            index = build_index(digest, blob, scratch, limits=limits)
            for name in _stored_files(index):
                os.rename(scratch / name, home / name)
            if index.compression == "gzip":
                _drop_old_copy(home / TAR_NAME)
            staged = scratch / INDEX_NAME
            staged.write_text(dumps(index), encoding="utf-8")
            os.rename(staged, home / INDEX_NAME)
        finally:
            # Never one cleanup error in place of the build's own.
            shutil.rmtree(scratch, ignore_errors=True)
    return index


def _drop_old_copy(tar: Path) -> None:
    """Remove format 1's tar copy of a gzip layer, unless a mount process still names it.

    Format 1's mount processes were started with ``--layer DIGEST=<the copy>``
    and open it on their first read of the layer: removing it under one of
    them would turn its reads into EIO.  Such a copy stays until a rebuild
    finds it unused.
    """
    if not tar.exists():
        return
    named = b"=" + os.fsencode(tar) + b"\0"
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            if named in (process / "cmdline").read_bytes():
                return
        except OSError:
            continue  # gone meanwhile, or not ours to read
    tar.unlink(missing_ok=True)


def _usable(layers_dir: Path, blob: Path, index: LayerIndex | None) -> LayerIndex | None:
    """``index``, unless what it points into went missing or changed size."""
    if index is None:
        return None
    try:
        check_data_present(layers_dir, blob, index)
    except BadImage:
        return None  # built again, its files first
    return index


def check_data_present(layers_dir: Path, blob: Path, index: LayerIndex) -> LayerData:
    """``layer_data``, refusing an index whose tar copy or checkpoint file is unusable.

    Cheap (a stat, an open): the tar copy must have ``tar_size`` bytes, the
    checkpoint file must open for reading and have ``checkpoints_size``.
    """
    data = layer_data(layers_dir, blob, index)
    try:
        size = data.path.stat().st_size
    except OSError as error:
        raise BadImage(
            f"layer {index.digest}: its tar data {data.path} is unreadable: {error}"
        ) from None
    if index.compression == "zstd" and size != index.tar_size:
        raise BadImage(f"layer {index.digest}: {data.path} has {size} bytes, want {index.tar_size}")
    if data.checkpoints is not None:
        try:
            with data.checkpoints.open("rb") as stream:
                size = os.fstat(stream.fileno()).st_size
        except OSError as error:
            raise BadImage(
                f"layer {index.digest}: its checkpoints {data.checkpoints} are unreadable: {error}"
            ) from None
        if size != index.checkpoints_size:
            raise BadImage(
                f"layer {index.digest}: its checkpoints {data.checkpoints} have {size} bytes,"
                f" want {index.checkpoints_size}"
            )
    return data
