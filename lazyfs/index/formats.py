"""One ``LayerFormat`` per kind of layer blob: how it is indexed, and how its tar bytes are reached.

An index's offsets point into a layer's *uncompressed* tar stream; each
format says how that stream is had at random, and what the store keeps
beside the index for it (``<layers_dir>/<hex>/``):

- ``PLAIN_TAR`` ("none"): the blob is the tar stream; read in place, nothing
  kept;
- ``GZIP``: the blob stays as it is; ``gzip-index`` holds checkpoints into
  its compressed stream (``lazyfs.index.gzip_checkpoints``), from which any
  range is decoded on demand;
- ``ZSTD``: the blob is decompressed once into ``tar`` and read there.  A
  layer is one zstd frame as a rule, and a frame cannot be entered in the
  middle, so there is nothing to checkpoint;
- ``ESTARGZ``: the blob need not be here at all.  Its index is built from
  its footer and TOC, read by range (``lazyfs.index.estargz_index``, through
  ``lazyfs.index.stored_remote.ensure_remote_index``), its offsets are in the
  layer's data space rather than its tar stream, and ``estargz-chunks``
  maps that space onto the blob's chunks
  (``lazyfs.index.estargz_chunks``), read through a ``BlobSource``.

The format is looked up once: by the blob's first bytes when indexing
(``format_of``; the signatures are those ``providers.compression.sniff``
knows, a test holds them equal), by the name the index records when
reading it back (``format_named``).  eStargz is never chosen by the bytes:
a TOC is trusted only through the digest its layer's descriptor gives, so
a local eStargz blob scanned whole is a gzip layer.  The store, the mount
process and the range readers only ever go through ``LayerFormat``.

Looking a format up, and ``layer_data`` and ``check_data``, load no tar
parser and no decompressor: a mount process serving stored indexes needs
only those.  The steps of an index build (``lazyfs.index.build``, which
decompresses as ``backends.apply`` does) are imported when a layer is
indexed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lazyfs.index.model import CHECKPOINTS_NAME, CHUNKS_NAME, TAR_NAME, LayerData, LayerIndex
from providers.digest import Digest
from providers.errors import BadImage
from providers.private_dir import private_file

if TYPE_CHECKING:
    from providers.tar_stream import LayerLimits


class LayerFormat(Protocol):
    """One kind of layer blob.

    ``name`` is what an index records as its ``compression``; ``magic`` the
    bytes a blob of this kind starts with (empty: any other blob);
    ``stored_files`` the files the store keeps beside the index (built into
    a scratch directory by ``index``, renamed into the layer's directory
    before the index that promises them); ``obsolete_files`` those older
    index formats kept there that this one no longer needs.
    """

    @property
    def name(self) -> str: ...

    @property
    def magic(self) -> bytes: ...

    @property
    def stored_files(self) -> tuple[str, ...]: ...

    @property
    def obsolete_files(self) -> tuple[str, ...]: ...

    def index(
        self, digest: Digest, blob: Path, scratch: Path, *, spacing: int, limits: LayerLimits | None
    ) -> LayerIndex:
        """Index the blob, writing ``stored_files`` to ``scratch``.

        ``limits`` None: ``LayerLimits()``.  Raises BadImage or UnsafeLayer
        as ``build_index`` says.
        """
        ...

    def layer_data(self, home: Path, blob: Path) -> LayerData:
        """Where the tar stream is read at random: for ``blob``, its files kept in ``home``.

        A ``LayerData`` without checkpoints is a tar file read directly;
        with them, a gzip blob read through its checkpoints.  No I/O.
        """
        ...

    def check_data(self, index: LayerIndex, data: LayerData) -> None:
        """BadImage unless ``data`` is usable for ``index`` (cheap: a stat, an open)."""
        ...


class _PlainTar:
    """A tar blob: scanned in place, headers only, and read in place."""

    name = "none"
    magic = b""
    stored_files: tuple[str, ...] = ()
    obsolete_files: tuple[str, ...] = ()

    def index(
        self, digest: Digest, blob: Path, scratch: Path, *, spacing: int, limits: LayerLimits | None
    ) -> LayerIndex:
        # The tar parsers load only when a layer is indexed (see the module docstring).
        from lazyfs.index.build import scan_in_place

        entries, tar_size = scan_in_place(digest, blob, limits=limits)
        return LayerIndex(digest, self.name, tar_size, entries)

    def layer_data(self, home: Path, blob: Path) -> LayerData:
        return LayerData(blob)

    def check_data(self, index: LayerIndex, data: LayerData) -> None:
        _size(index, data.path, "its tar data")


class _Gzip:
    """A gzip blob: scanned as it is decompressed, read through checkpoints made on the way."""

    name = "gzip"
    magic = b"\x1f\x8b"
    stored_files = (CHECKPOINTS_NAME,)
    # Format 1 kept an uncompressed copy of a gzip layer.
    obsolete_files = (TAR_NAME,)

    def index(
        self, digest: Digest, blob: Path, scratch: Path, *, spacing: int, limits: LayerLimits | None
    ) -> LayerIndex:
        from lazyfs.index.build import scan_with_checkpoints

        entries, tar_size, checkpoints = scan_with_checkpoints(
            digest, blob, spacing=spacing, limits=limits
        )
        with private_file(scratch / CHECKPOINTS_NAME) as out:
            out.write(checkpoints)
        return LayerIndex(digest, self.name, tar_size, entries, len(checkpoints))

    def layer_data(self, home: Path, blob: Path) -> LayerData:
        return LayerData(blob, home / CHECKPOINTS_NAME)

    def check_data(self, index: LayerIndex, data: LayerData) -> None:
        _size(index, data.path, "its tar data")
        assert data.checkpoints is not None  # layer_data gives them
        _kept_file(index, data.checkpoints, "its checkpoints")


class _Zstd:
    """A zstd blob: decompressed once into a tar copy, which is scanned and read."""

    name = "zstd"
    magic = b"\x28\xb5\x2f\xfd"
    stored_files = (TAR_NAME,)
    obsolete_files: tuple[str, ...] = ()

    def index(
        self, digest: Digest, blob: Path, scratch: Path, *, spacing: int, limits: LayerLimits | None
    ) -> LayerIndex:
        from lazyfs.index.build import copy_decompressed, scan_tar

        tar = scratch / TAR_NAME
        tar_size = copy_decompressed(digest, blob, tar, limits=limits)
        return LayerIndex(digest, self.name, tar_size, scan_tar(tar, layer=str(digest)))

    def layer_data(self, home: Path, blob: Path) -> LayerData:
        return LayerData(home / TAR_NAME)

    def check_data(self, index: LayerIndex, data: LayerData) -> None:
        size = _size(index, data.path, "its tar data")
        if size != index.tar_size:
            raise BadImage(
                f"layer {index.digest}: {data.path} has {size} bytes, want {index.tar_size}"
            )


class _Estargz:
    """An eStargz blob, indexed from its TOC by range reads and read chunk by chunk.

    Not found by its bytes (``magic`` is empty, and ``format_of`` passes
    over it): see the module docstring.  The blob need not be local, so
    ``layer_data`` ignores ``blob``: its chunks are read through a
    ``BlobSource`` (``lazyfs.blobs.ranges.open_layers``).
    """

    name = "estargz"
    magic = b""
    stored_files = (CHUNKS_NAME,)
    obsolete_files: tuple[str, ...] = ()

    def index(
        self, digest: Digest, blob: Path, scratch: Path, *, spacing: int, limits: LayerLimits | None
    ) -> LayerIndex:
        raise BadImage(
            f"layer {digest}: an eStargz index is built from its TOC and its descriptor"
            " (lazyfs.index.stored_remote.ensure_remote_index), not from a local blob"
        )

    def layer_data(self, home: Path, blob: Path) -> LayerData:
        return LayerData(home / CHUNKS_NAME, chunks=True)

    def check_data(self, index: LayerIndex, data: LayerData) -> None:
        _kept_file(index, data.path, "its chunk table")


def _kept_file(index: LayerIndex, path: Path, what: str) -> None:
    """BadImage unless ``path`` opens for reading and has ``index.checkpoints_size`` bytes."""
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
    except OSError as error:
        raise BadImage(f"layer {index.digest}: {what} {path} cannot be read: {error}") from None
    if size != index.checkpoints_size:
        raise BadImage(
            f"layer {index.digest}: {what} {path}: {size} bytes, want {index.checkpoints_size}"
        )


def _size(index: LayerIndex, path: Path, what: str) -> int:
    try:
        return path.stat().st_size
    except OSError as error:
        raise BadImage(f"layer {index.digest}: {what} {path} is unreadable: {error}") from None


PLAIN_TAR: LayerFormat = _PlainTar()
GZIP: LayerFormat = _Gzip()
ZSTD: LayerFormat = _Zstd()
ESTARGZ: LayerFormat = _Estargz()
FORMATS: dict[str, LayerFormat] = {kind.name: kind for kind in (PLAIN_TAR, GZIP, ZSTD, ESTARGZ)}


def format_named(name: str) -> LayerFormat:
    """The format an index records as its ``compression``; BadImage for one not known here."""
    found = FORMATS.get(name)
    if found is None:
        raise BadImage(f"layer format {name!r} is not one of {', '.join(sorted(FORMATS))}")
    return found


def format_of(head: bytes) -> LayerFormat:
    """The format of a blob that starts with ``head`` (8 bytes are enough).

    The bytes decide, not the media type: images in the wild label gzip
    layers as plain tar and the reverse.  A blob no magic matches is plain
    tar to look at; its build refuses the compressions no format here reads
    (bzip2, xz).
    """
    for kind in FORMATS.values():
        if kind.magic and head.startswith(kind.magic):
            return kind
    return PLAIN_TAR


def build_index(
    digest: Digest,
    blob: Path,
    scratch: Path,
    *,
    spacing: int | None = None,
    limits: LayerLimits | None = None,
) -> LayerIndex:
    """Index the layer blob ``blob``, writing what the index points into to ``scratch``.

    ``spacing`` is the distance between gzip checkpoints (tests make it
    small; default ``gzip_checkpoints.SPACING``).  Raises BadImage or
    UnsafeLayer (naming the layer and entry) for layers the backends refuse,
    BadImage for one that unpacks past ``limits`` (default:
    ``LayerLimits()``), as apply does.
    """
    if spacing is None:
        # Here, not at the top: indexed_gzip is no business of a lazy mount's.
        from lazyfs.index.gzip_checkpoints import SPACING

        spacing = SPACING
    with blob.open("rb") as stream:
        head = stream.read(8)
    return format_of(head).index(digest, blob, scratch, spacing=spacing, limits=limits)
