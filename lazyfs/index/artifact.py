"""The index artifact: one layer's index as two blobs published beside its image.

A registry image whose layers are plain gzip or tar can be read lazily by a
machine that has never pulled it, if it finds the index some other machine
built (``lazyfs index push``, or ``--publish_indexes`` after a full pull).
Format 2 cuts each layer's index in two blobs, so that a mount fetches whole
only what is small:

- the *head* (media type ``INDEX_MEDIA_TYPE``), fetched whole and checked
  against its digest when the image is provisioned::

      {"lazyfs_index": 2, "layer": ..., "layer_size": ..., ...}\\n   header line (JSON)
      <index_bytes bytes: the store's index text (lazyfs.index.model.dumps), zlib>

  The header names the layer digest and size, the layer's format ("gzip"
  or "none"), the tar stream's length, ``spans``: the compressed blob cut
  into consecutive ranges ``[offset, length, sha256 hex]`` covering it
  exactly, cut at every checkpoint's first byte (and at most ``MAX_SPAN`` long), and,
  for gzip, ``points``: the checkpoints ``[offset, position, bits, sha256
  hex]`` (where zran may start inflating: compressed offset, ``bits``
  back, tar position; the sha256 of the tar stream from there to the next
  checkpoint or the stream's end, its *interval*), each but the first
  followed by ``window offset, length, sha256 hex`` of its window in the
  windows blob, which ``windows`` (``{"digest", "size"}``) names;
- the *windows* (``WINDOWS_MEDIA_TYPE``): each checkpoint's 32 KiB window
  (the inflated bytes before it, what inflating from there needs), zlib
  compressed, one after another.  A mount reads a window by range only when
  a read inflates from its checkpoint, and checks it against its digest in
  the head before it is inflated; it inflates a whole interval, and checks
  it against its digest before serving any of it
  (``lazyfs.blobs.gzip_remote``).

Format 1 (``application/vnd.lazyfs.index.v1``: one blob, every window raw)
is not read any more: its artifacts are not looked up, so such an image is
pulled whole until its index is pushed again.

Pure.  ``decode`` distrusts its input: it came from a registry.  Every size
and offset is checked against the layer and the blob, and anything off is a
BadImage naming the artifact, in one line; an unknown version is refused,
not guessed at.  What the checks cannot prove is that the index is the one
the layer's own bytes give: span digests make wrong compressed bytes fail,
window digests make windows other than the head's fail, but the windows
the head names and the entries (names, modes, owners, where each file's
bytes are) are taken on the artifact's word (a regular file is held to its
tar headers when its data is first read: ``lazyfs.blobs.entry_check``;
entries without data are not).  The tar stream itself is held to the
interval digests, so a forged checkpoint or window is EIO, not other bytes;
but a head forged whole can name a stream of its own making.  So the artifact is trusted as far as
whoever may push to the image's repository, and only when
``--trust_published_indexes`` says so; the layer's blob digest and diff_id
are checked only once the whole blob has arrived.  Building is
``lazyfs.index.artifact_build``.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lazyfs.index.model import LayerIndex, dumps, loads
from providers import untrusted_json
from providers.digest import Digest, parse_digest
from providers.errors import BadImage

if TYPE_CHECKING:
    from providers.layer_limits import LayerLimits

ARTIFACT_VERSION = 2
# artifactType of the OCI manifest that lists a image's index blobs; the
# version is in the name so later formats can sit beside this one.
ARTIFACT_TYPE = "application/vnd.lazyfs.index.v2"
INDEX_MEDIA_TYPE = "application/vnd.lazyfs.index.layer.v2"
WINDOWS_MEDIA_TYPE = "application/vnd.lazyfs.index.windows.v2"
CONFIG_MEDIA_TYPE = "application/vnd.lazyfs.index.config.v1+json"
# On each blob's descriptor in the artifact manifest: the layer it indexes.
LAYER_ANNOTATION = "dev.lazyfs.index.layer"
COMPRESSIONS = ("gzip", "none")

# Bounds on what a registry may hand us: a head or windows blob beyond
# MAX_BLOB, or a head whose index text inflates past MAX_INDEX, is refused
# and that layer pulled whole instead.  Parsing an index's text takes about
# 12 times its size at its peak (the bench image's real rows, ~110 bytes
# each): 128 MiB holds the index of a layer of about 1.2 million files.
# Text denser in arrays than any real index (``ROW_BYTES_PER_CONTAINER``,
# ``HEADER_BYTES_PER_CONTAINER``) is refused before it is parsed: rows of
# ``[]``, or arrays nested hundreds deep, took 21 to 44 times their size,
# and a hostile head could cost some 9 GB to refuse.
MAX_BLOB = 512 << 20
MAX_INDEX = 128 << 20
MAX_HEADER = 64 << 20
# Least bytes of text per array or object: a header's span or checkpoint is
# some 70 bytes or more; an index row (``lazyfs.index.model``) of three or
# four arrays is 40 or more, and an xattr's or an extent's own array 8.
HEADER_BYTES_PER_CONTAINER = 16
MAX_SPAN = 4 << 20
MAX_SIZE = 1 << 50
# Entries of one layer: as many as a tar scan reads (``providers.tar_stream``).
MAX_ENTRIES = 10_000_000
TAR_BLOCK = 512  # a tar member's header at least: a stream holds at most size / 512 members
WINDOW = 32768
# A compressed window: zlib of 32 KiB that does not compress is a little longer.
MAX_WINDOW_BYTES = WINDOW + 1024
# Tar stream between two checkpoints: inflated whole to be checked.  zran
# checkpoints at a deflate block's end past its spacing, and a zlib block
# holds at most 16 Ki symbols of up to 258 bytes: ~4 MiB past the spacing.
MAX_INTERVAL = 16 << 20

_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Span:
    """``length`` bytes of a blob at ``offset``, whose sha256 is ``sha256`` (hex)."""

    offset: int
    length: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Point:
    """Where inflating may start: compressed ``offset`` (``bits`` back), tar ``position``.

    ``sha256``: of the tar stream from ``position`` to the next point (or
    the stream's end); ``window``: where its compressed window is in the
    windows blob, None only for the first point, at the deflate stream's start.
    """

    offset: int
    position: int
    bits: int
    sha256: str
    window: Span | None


@dataclass(frozen=True, slots=True)
class LayerArtifact:
    """One layer's published index: entries, span digests, checkpoints, the windows blob."""

    layer: Digest
    layer_size: int
    index: LayerIndex
    spans: tuple[Span, ...]
    points: tuple[Point, ...] = ()
    windows: Digest | None = None
    windows_size: int = 0


def first_byte(point: Point) -> int:
    """Where the compressed bytes inflating from ``point`` start: a byte back for ``bits``."""
    return point.offset - 1 if point.bits else point.offset


def _bad(what: str) -> BadImage:
    return BadImage(f"lazyfs index artifact: {what}")


def encode(artifact: LayerArtifact) -> bytes:
    """The head blob of ``artifact``; ``decode`` gives it back equal."""
    text = zlib.compress(dumps(artifact.index).encode(), 9)
    header: dict[str, Any] = {
        "lazyfs_index": ARTIFACT_VERSION,
        "layer": artifact.layer,
        "layer_size": artifact.layer_size,
        "compression": artifact.index.compression,
        "tar_size": artifact.index.tar_size,
        "index_bytes": len(text),
        "spans": [_row(s) for s in artifact.spans],
        "points": [_point_row(p) for p in artifact.points],
        "windows": None
        if artifact.windows is None
        else {"digest": artifact.windows, "size": artifact.windows_size},
    }
    line = json.dumps(header, separators=(",", ":")).encode() + b"\n"
    return line + text


def _row(span: Span) -> list[int | str]:
    return [span.offset, span.length, span.sha256]


def _point_row(point: Point) -> list[int | str]:
    head: list[int | str] = [point.offset, point.position, point.bits, point.sha256]
    return head if point.window is None else head + _row(point.window)


def decode(
    data: bytes, *, layer: Digest | None = None, size: int | None = None,
    limits: LayerLimits | None = None,
) -> LayerArtifact:  # fmt: skip
    """Parse and check a head blob; BadImage (one line) for anything off.

    ``layer``, ``size``: the digest and size of the layer the caller wants
    an index of; an artifact naming another is refused, before its index is
    inflated. With ``size``, ``limits`` bound the tar stream it may claim,
    as they bound a layer's. The count of entries its header gives is
    bounded by its tar stream (a member takes a 512-byte header at least)
    before the rows are parsed; what parsing them holds is bounded by
    ``MAX_INDEX`` and ``ROW_BYTES_PER_CONTAINER``.
    """
    return decode_text(data, layer=layer, size=size, limits=limits)[0]


def decode_text(
    data: bytes, *, layer: Digest | None = None, size: int | None = None,
    limits: LayerLimits | None = None,
) -> tuple[LayerArtifact, bytes]:  # fmt: skip
    """``decode``, and the layer index's text as it inflated, which its index was parsed
    from: the store may keep it as it is (``lazyfs.index.published.store_published``)."""
    if len(data) > MAX_BLOB:
        raise _bad(f"{len(data)} bytes, more than {MAX_BLOB}")
    end = data.find(b"\n", 0, MAX_HEADER)
    if end < 0:
        raise _bad("no header line")
    try:
        header = untrusted_json.loads(data[:end], per_container=HEADER_BYTES_PER_CONTAINER)
    except ValueError as error:
        raise _bad(f"header is not JSON of a lazyfs index: {error}") from None
    if not isinstance(header, dict):
        raise _bad("header is not a JSON object")
    version = header.get("lazyfs_index")
    if version != ARTIFACT_VERSION:
        raise _bad(f"unknown version {version!r} (this lazyfs reads {ARTIFACT_VERSION})")
    try:
        named = parse_digest(_field(header, "layer", str))
    except BadImage as error:
        raise _bad(f"layer: {error}") from None
    if layer is not None and named != layer:
        raise _bad(f"it indexes layer {named}, not {layer}")
    named_size = _size(header, "layer_size")
    if size is not None and named_size != size:
        raise _bad(f"it indexes {named_size} bytes of layer {named}, the layer has {size}")
    size = named_size
    compression = _field(header, "compression", str)
    if compression not in COMPRESSIONS:
        raise _bad(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    tar_size = _size(header, "tar_size")
    if limits is not None:
        most, why = limits.bound(size)
        if tar_size > most:
            raise _bad(f"it gives the layer {tar_size} bytes of tar stream, past {why}")
    index_bytes = _size(header, "index_bytes")
    body = end + 1
    if body + index_bytes != len(data):
        raise _bad(f"header promises {index_bytes} bytes, body has {len(data) - body}")
    index, text = _index(data[body:], min(MAX_ENTRIES, tar_size // TAR_BLOCK))
    if index.digest != named or index.compression != compression or index.tar_size != tar_size:
        raise _bad("its layer index disagrees with its header")
    if index.checkpoints_size != 0:
        raise _bad("its layer index promises a checkpoint file")
    # Here, not at the top: a mount process loads this module, and decodes no head.
    from lazyfs.index.artifact_entries import entry_trouble

    trouble = entry_trouble(index)
    if trouble is not None:
        raise _bad(trouble)
    spans = _spans(header.get("spans"), size)
    windows, windows_size = _windows_blob(header.get("windows"))
    points = _points(header.get("points"), size, tar_size, windows_size)
    if compression == "none":
        if tar_size != size or points or windows is not None:
            raise _bad("a tar layer's index has checkpoints or another length than its blob")
    else:
        if not points:
            raise _bad("a gzip layer's index has no checkpoints")
        starts = {span.offset for span in spans}
        for point in points:
            if first_byte(point) not in starts:
                raise _bad(f"checkpoint at {point.offset} is not where a span starts")
    return LayerArtifact(named, size, index, spans, points, windows, windows_size), text


def _index(text: bytes, max_entries: int) -> tuple[LayerIndex, bytes]:
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(text, MAX_INDEX + 1)
    except zlib.error as error:
        raise _bad(f"its layer index does not inflate: {error}") from None
    if len(raw) > MAX_INDEX or not inflater.eof or inflater.unused_data:
        raise _bad(f"its layer index is not one zlib stream of at most {MAX_INDEX} bytes")
    try:
        return loads(raw.decode("utf-8", "surrogateescape"), max_entries=max_entries), raw
    except ValueError as error:
        raise _bad(f"its layer index: {error}") from None


def _field(header: dict[str, Any], name: str, kind: type) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(f"{name} missing or not a {kind.__name__}")
    return value


def _size(header: dict[str, Any], name: str) -> int:
    value: int = _field(header, name, int)
    if not 0 <= value <= MAX_SIZE:
        raise _bad(f"{name} {value} out of range")
    return value


def _ints(item: object, count: int) -> bool:
    return (
        isinstance(item, list)
        and len(item) >= count
        and all(isinstance(v, int) and not isinstance(v, bool) for v in item[:count])
    )


def _span(item: list[Any], what: str) -> Span:
    if (
        not _ints(item, 2)
        or len(item) != 3
        or not isinstance(item[2], str)
        or not _HEX.match(item[2])
    ):
        raise _bad(f"{what} {str(item)[:80]} is not [offset, length, sha256 hex]")
    return Span(item[0], item[1], item[2])


def _spans(raw: object, size: int) -> tuple[Span, ...]:
    if not isinstance(raw, list) or len(raw) > size + 1:
        raise _bad("spans missing or too many")
    spans = []
    position = 0
    for item in raw:
        span = _span(item, "span")
        if span.offset != position:
            raise _bad(f"span at {span.offset}, the one before ended at {position}")
        if not 0 < span.length <= MAX_SPAN:
            raise _bad(f"span at {span.offset}: length {span.length} not in 1..{MAX_SPAN}")
        position += span.length
        if position > size:
            raise _bad(f"span at {span.offset} runs past the blob's {size} bytes")
        spans.append(span)
    if position != size:
        raise _bad(f"spans cover {position} bytes of the blob's {size}")
    return tuple(spans)


def _windows_blob(raw: object) -> tuple[Digest | None, int]:
    if raw is None:
        return None, 0
    if not isinstance(raw, dict):
        raise _bad("windows is not an object")
    try:
        digest = parse_digest(_field(raw, "digest", str))
    except BadImage as error:
        raise _bad(f"windows: {error}") from None
    size = _size(raw, "size")
    if not 0 < size <= MAX_BLOB:
        raise _bad(f"windows blob of {size} bytes, not in 1..{MAX_BLOB}")
    return digest, size


def _points(raw: object, size: int, tar_size: int, windows_size: int) -> tuple[Point, ...]:
    """The checkpoints: in order inside the layer, each window tiling the windows blob.

    Inflating trusts where it starts, so every point but the first (the
    deflate stream's start, which needs no window) must have one.
    """
    if not isinstance(raw, list) or len(raw) > tar_size + 1:
        raise _bad("points missing or too many")
    points: list[Point] = []
    offset, position, stored = 0, -1, 0
    for number, item in enumerate(raw):
        if (
            not _ints(item, 3)
            or len(item) not in (4, 7)
            or not isinstance(item[3], str)
            or not _HEX.match(item[3])
        ):
            raise _bad(f"checkpoint {number} is not [offset, position, bits, sha256, window...]")
        cmp, uncmp, bits, digest = item[:4]
        if cmp < offset or cmp > size or uncmp <= position or uncmp > tar_size:
            raise _bad(f"checkpoint {number} at {cmp}/{uncmp} is out of order or past the layer")
        if not 0 <= bits <= 7 or (bits and cmp == 0) or (number == 0) != (uncmp == 0):
            raise _bad(f"checkpoint {number} is malformed")
        window = None if len(item) == 4 else _span(item[4:], f"checkpoint {number}'s window")
        if (window is None) != (number == 0):
            raise _bad(f"checkpoint {number} {'lacks' if window is None else 'has'} a window")
        if window is not None:
            if window.offset != stored or not 0 < window.length <= MAX_WINDOW_BYTES:
                raise _bad(f"checkpoint {number}'s window is out of place or of a bad length")
            stored += window.length
        if position >= 0 and uncmp - position > MAX_INTERVAL:
            raise _bad(f"checkpoint {number} is more than {MAX_INTERVAL} bytes past the one before")
        offset, position = cmp, uncmp
        points.append(Point(cmp, uncmp, bits, digest, window))
    if points and tar_size - position > MAX_INTERVAL:
        raise _bad(f"the last checkpoint is more than {MAX_INTERVAL} bytes before the end")
    if stored != windows_size:
        raise _bad(f"windows take {stored} bytes, the windows blob has {windows_size}")
    return tuple(points)
