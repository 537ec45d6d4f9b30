"""LayerIndex: the table of contents of one layer blob, and its place in the store.

An index lists every entry of a layer's tar stream in archive order: path,
kind, mode, owner, size, mtime (to the nanosecond), link target, device
numbers, xattrs, and for regular files where their bytes start in the
*uncompressed* tar stream.  Whiteouts and opaque markers stay in the index
as markers (``Kind.WHITEOUT`` naming the hidden path, ``Kind.OPAQUE`` naming
the directory), so the merged tree applies the same rules
(``providers.layer_rules``) as the extracting backends; AUFS bookkeeping
entries are dropped.

Where the bytes are: for a plain tar blob, the offsets are offsets into the
blob itself.  For gzip and zstd blobs this version decompresses the blob once
into ``<layers_dir>/<hex>/tar`` and the offsets point there (a documented
simplification: gzip checkpoints and zstd frames that would let a range be
read without that copy come later; ``LayerIndex.data_path`` is the one place
that knows).  Either way ``read_range(digest, offset, length)`` over the
returned ``data`` file is all a reader needs.

``ensure_index`` builds and stores the index once per layer digest (under an
flock, written to a scratch file and renamed into place, so a present index
is complete), and reads it back on every later call.  Blocking.
"""

from __future__ import annotations

import base64
import enum
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from providers.digest import Digest, hex_part
from providers.errors import BadImage
from providers.fslock import exclusive_lock
from providers.layer_rules import RelPath

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
TAR_NAME = "tar"


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
    stream (0 for other kinds); ``size`` is 0 except for files.
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


@dataclass(frozen=True, slots=True)
class LayerIndex:
    """The entries of the layer ``digest``, in archive order.

    ``compression`` is what the blob was ("none", "gzip", "zstd");
    ``tar_size`` the length of the uncompressed tar stream.
    """

    digest: Digest
    compression: str
    tar_size: int
    entries: tuple[IndexEntry, ...]


def data_path(layers_dir: Path, blob: Path, index: LayerIndex) -> Path:
    """The uncompressed tar file the index's offsets point into."""
    if index.compression == "none":
        return blob
    return layers_dir / hex_part(index.digest) / TAR_NAME


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
    ]


def _entry_from_json(row: list[Any]) -> IndexEntry:
    path, kind, mode, uid, gid, size, mtime_ns, target, rdev, xattrs, offset = row
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
    )


def dumps(index: LayerIndex) -> str:
    """The index as JSON text; ``loads`` gives it back equal."""
    return json.dumps(
        {
            "version": FORMAT_VERSION,
            "digest": index.digest,
            "compression": index.compression,
            "tar_size": index.tar_size,
            "entries": [_entry_to_json(entry) for entry in index.entries],
        },
        separators=(",", ":"),
    )


def loads(text: str) -> LayerIndex:
    """Parse ``dumps`` output; ValueError when it is not a current index."""
    try:
        data = json.loads(text)
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"index format {data.get('version')!r}, want {FORMAT_VERSION}")
        return LayerIndex(
            digest=Digest(data["digest"]),
            compression=str(data["compression"]),
            tar_size=int(data["tar_size"]),
            entries=tuple(_entry_from_json(row) for row in data["entries"]),
        )
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise ValueError(f"malformed layer index: {error!r}") from error


# -- the store ------------------------------------------------------------------


def index_path(layers_dir: Path, digest: Digest) -> Path:
    return layers_dir / hex_part(digest) / INDEX_NAME


def load_index(layers_dir: Path, digest: Digest) -> LayerIndex | None:
    """The stored index of ``digest``; None if there is none or it is stale or damaged."""
    try:
        index = loads(index_path(layers_dir, digest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return index if index.digest == digest else None


def ensure_index(layers_dir: Path, tmp_dir: Path, digest: Digest, blob: Path) -> LayerIndex:
    """The index of the verified layer blob ``blob``, built and stored if missing.

    For compressed blobs the uncompressed copy is written first, then the
    index that promises it.  Raises BadImage for a corrupt layer, UnsafeLayer
    for a hostile one; nothing is stored then.
    """
    found = _usable(layers_dir, blob, load_index(layers_dir, digest))
    if found is not None:
        return found
    # Here to keep the build (tarfile, decompressors) out of mount startup.
    from lazyfs.index_build import build_index

    home = layers_dir / hex_part(digest)
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home / "lock"):
        found = _usable(layers_dir, blob, load_index(layers_dir, digest))
        if found is not None:  # another process built it while we waited
            return found
        scratch = Path(tempfile.mkdtemp(dir=tmp_dir, prefix=f"{os.getpid()}."))
        try:
            index = build_index(digest, blob, scratch / TAR_NAME)
            if index.compression != "none":
                os.rename(scratch / TAR_NAME, home / TAR_NAME)
            staged = scratch / INDEX_NAME
            staged.write_text(dumps(index), encoding="utf-8")
            os.rename(staged, home / INDEX_NAME)
        finally:
            for leftover in scratch.iterdir():
                leftover.unlink()
            scratch.rmdir()
    return index


def _usable(layers_dir: Path, blob: Path, index: LayerIndex | None) -> LayerIndex | None:
    """``index``, unless the uncompressed copy it points into went missing or changed size."""
    if index is None:
        return None
    try:
        check_tar_present(layers_dir, blob, index)
    except BadImage:
        return None  # built again, copy first
    return index


def check_tar_present(layers_dir: Path, blob: Path, index: LayerIndex) -> Path:
    """``data_path``, refusing an index whose uncompressed copy went missing."""
    path = data_path(layers_dir, blob, index)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise BadImage(
            f"layer {index.digest}: its tar data {path} is unreadable: {error}"
        ) from None
    if index.compression != "none" and size != index.tar_size:
        raise BadImage(f"layer {index.digest}: {path} has {size} bytes, want {index.tar_size}")
    return path
