"""The index artifact: one layer's index as a blob published beside its image.

A registry image whose layers are plain gzip or tar can be read lazily by a
machine that has never pulled it, if it finds the index some other machine
built (``lazyfs index push``, or ``--publish_indexes`` after a full pull).
Each layer's index is one blob, of media type ``INDEX_MEDIA_TYPE``::

    {"lazyfs_index": 1, "layer": ..., "layer_size": ..., ...}\\n   header line (JSON)
    <index_bytes bytes: the store's index text (lazyfs.index.model.dumps)>
    <checkpoints_bytes bytes: gzip checkpoints (indexed_gzip's export)>

The header names the layer digest and size, the layer's format ("gzip" or
"none"), the tar stream's length, the two section lengths, and ``spans``:
the compressed blob cut into consecutive ranges ``[offset, length, sha256
hex]`` covering it exactly, cut at every checkpoint's compressed offset (and
at most ``MAX_SPAN`` long).  A reader fetches whole spans and checks each
against its digest before anything inflated from it is served
(``lazyfs.blobs.gzip_remote``).

Pure (no I/O but ``build_artifact``'s read of a local blob).  ``decode``
distrusts its input: it came from a registry.  Every size and offset is
checked against the layer and the blob, and anything off is a BadImage
naming the artifact, in one line; an unknown version is refused, not
guessed at.  What the checks cannot prove is that the index is the one the
layer's own bytes give: span digests make wrong compressed bytes fail, but
checkpoint windows (what zran inflates from) and entries (names, modes,
owners, where each file's bytes are) are taken on the artifact's word
(a regular file is held to its tar headers when its data is first read:
``lazyfs.blobs.entry_check``; entries without data are not).  So
the artifact is trusted as far as whoever may push to the image's
repository, even for an image pinned by digest (it is found by the image
digest, not pinned by it), and only when ``--trust_published_indexes``
says so; the layer's blob digest and diff_id are checked only once the
whole blob has arrived.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyfs.index.model import Kind, LayerIndex, loads
from providers.digest import Digest, parse_digest
from providers.errors import BadImage

ARTIFACT_VERSION = 1
# artifactType of the OCI manifest that lists a image's index blobs; the
# version is in the name so later formats can sit beside this one.
ARTIFACT_TYPE = "application/vnd.lazyfs.index.v1"
INDEX_MEDIA_TYPE = "application/vnd.lazyfs.index.layer.v1"
CONFIG_MEDIA_TYPE = "application/vnd.lazyfs.index.config.v1+json"
# On each index blob's descriptor in the artifact manifest: the layer it indexes.
LAYER_ANNOTATION = "dev.lazyfs.index.layer"
COMPRESSIONS = ("gzip", "none")

# Bounds on what a registry may hand us.  A layer of 10 GiB has ~10k gzip
# checkpoints of 32 KiB (~330 MiB); indexes beyond MAX_BLOB are refused and
# that image is pulled whole instead.
MAX_BLOB = 512 << 20
MAX_HEADER = 16 << 20
MAX_SPAN = 4 << 20
# The builder's span length where checkpoints are sparse, and for tar layers.
SPAN = 1 << 20
MAX_SIZE = 1 << 50

_GZIDX = b"GZIDX"
_GZIDX_HEAD = struct.Struct("<5sBBQQIII")
_GZIDX_POINT = struct.Struct("<QQBB")
_WINDOW = 32768
_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Span:
    """``length`` bytes of the compressed blob at ``offset``, whose sha256 is ``sha256`` (hex)."""

    offset: int
    length: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where zran may start inflating: compressed ``offset`` (``bits`` back), tar ``position``."""

    offset: int
    position: int
    bits: int


@dataclass(frozen=True, slots=True)
class LayerArtifact:
    """One layer's published index: its entries, checkpoints and span digests."""

    layer: Digest
    layer_size: int
    index: LayerIndex
    checkpoints: bytes
    spans: tuple[Span, ...]


def _bad(what: str) -> BadImage:
    return BadImage(f"lazyfs index artifact: {what}")


def encode(artifact: LayerArtifact) -> bytes:
    """The blob of ``artifact``; ``decode`` gives it back equal."""
    from lazyfs.index.model import dumps

    text = dumps(artifact.index).encode()
    header = {
        "lazyfs_index": ARTIFACT_VERSION,
        "layer": artifact.layer,
        "layer_size": artifact.layer_size,
        "compression": artifact.index.compression,
        "tar_size": artifact.index.tar_size,
        "index_bytes": len(text),
        "checkpoints_bytes": len(artifact.checkpoints),
        "spans": [[s.offset, s.length, s.sha256] for s in artifact.spans],
    }
    line = json.dumps(header, separators=(",", ":")).encode() + b"\n"
    return line + text + artifact.checkpoints


def decode(data: bytes, *, layer: Digest | None = None) -> LayerArtifact:
    """Parse and check an index blob; BadImage (one line) for anything off.

    ``layer``: the digest the caller wants an index of; an artifact naming
    another layer is refused.
    """
    if len(data) > MAX_BLOB:
        raise _bad(f"{len(data)} bytes, more than {MAX_BLOB}")
    end = data.find(b"\n", 0, MAX_HEADER)
    if end < 0:
        raise _bad("no header line")
    try:
        header = json.loads(data[:end])
    except ValueError:
        raise _bad("header is not JSON") from None
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
    size = _size(header, "layer_size")
    compression = _field(header, "compression", str)
    if compression not in COMPRESSIONS:
        raise _bad(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    tar_size = _size(header, "tar_size")
    index_bytes = _size(header, "index_bytes")
    checkpoints_bytes = _size(header, "checkpoints_bytes")
    body = end + 1
    if body + index_bytes + checkpoints_bytes != len(data):
        raise _bad(
            f"header promises {index_bytes}+{checkpoints_bytes} bytes, body has {len(data) - body}"
        )
    try:
        index = loads(data[body : body + index_bytes].decode("utf-8", "surrogateescape"))
    except ValueError as error:
        raise _bad(f"its layer index: {error}") from None
    if index.digest != named or index.compression != compression or index.tar_size != tar_size:
        raise _bad("its layer index disagrees with its header")
    _check_entries(index)
    checkpoints = data[body + index_bytes :]
    spans = _spans(header.get("spans"), size)
    if compression == "none":
        if tar_size != size or checkpoints:
            raise _bad("a tar layer's index has checkpoints or another length than its blob")
        if index.checkpoints_size != 0:
            raise _bad("a tar layer's index promises checkpoints")
    else:
        if index.checkpoints_size != len(checkpoints):
            raise _bad(f"checkpoints have {len(checkpoints)} bytes, index says otherwise")
        points = parse_checkpoints(checkpoints, size, tar_size)
        starts = {span.offset for span in spans}
        for point in points:
            if point.offset not in starts and point.offset != size:
                raise _bad(f"checkpoint at {point.offset} is not where a span starts")
    return LayerArtifact(named, size, index, checkpoints, spans)


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


def _check_entries(index: LayerIndex) -> None:
    """Every entry is one a layer scan could give: plain names, bytes inside the stream.

    A scan (``lazyfs.index.build``) names entries as ``providers.layer_rules``
    normalizes tar names: no empty, ``.`` or ``..`` component, no NUL; a
    published index must not bring what a scan never would.
    """
    for entry in index.entries:
        name = "/".join(entry.path)
        if not _plain_path(entry.path):
            raise _bad(f"entry {name[:200]!r} is not a plain relative path")
        if entry.kind is Kind.HARDLINK and not _plain_path(tuple(entry.target.split("/"))):
            raise _bad(f"hardlink {name[:200]!r} names no plain path")
        if not 0 <= entry.mode <= 0o7777 or entry.size < 0:
            raise _bad(f"entry {name[:200]!r} has a bad mode or size")
        extents = entry.extents or ()
        stored = sum(e[1] for e in extents) if entry.extents is not None else entry.size
        if any(e[0] < 0 or e[1] < 0 or e[0] + e[1] > entry.size or e[2] < 0 for e in extents):
            raise _bad(f"entry {name[:200]!r} has extents outside it")
        if any(e[2] + e[1] > stored for e in extents):
            raise _bad(f"entry {name[:200]!r} has extents outside its data")
        if entry.offset < 0 or entry.offset + stored > index.tar_size:
            raise _bad(f"entry {name[:200]!r} reaches past the layer's tar stream")


def _plain_path(path: tuple[str, ...]) -> bool:
    return all(part not in ("", ".", "..") and "\0" not in part for part in path)


def _spans(raw: object, size: int) -> tuple[Span, ...]:
    if not isinstance(raw, list) or len(raw) > size + 1:
        raise _bad("spans missing or too many")
    spans = []
    position = 0
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item[:2])
            or not isinstance(item[2], str)
            or not _HEX.match(item[2])
        ):
            raise _bad(f"span {str(item)[:80]} is not [offset, length, sha256 hex]")
        offset, length, digest = item
        if offset != position:
            raise _bad(f"span at {offset}, the one before ended at {position}")
        if not 0 < length <= MAX_SPAN:
            raise _bad(f"span at {offset}: length {length} not in 1..{MAX_SPAN}")
        position += length
        if position > size:
            raise _bad(f"span at {offset} runs past the blob's {size} bytes")
        spans.append(Span(offset, length, digest))
    if position != size:
        raise _bad(f"spans cover {position} bytes of the blob's {size}")
    return tuple(spans)


def parse_checkpoints(data: bytes, size: int, tar_size: int) -> tuple[Checkpoint, ...]:
    """The points of indexed_gzip's exported index ``data`` for a ``size``-byte blob.

    Checked against the blob and tar lengths, the window size and its own
    length: zran trusts what it imports.
    """
    if len(data) < _GZIDX_HEAD.size:
        raise _bad("checkpoints truncated")
    magic, version, _flags, csize, usize, _spacing, window, count = _GZIDX_HEAD.unpack_from(data)
    if magic != _GZIDX or version != 1:
        raise _bad("checkpoints are not an indexed_gzip index of version 1")
    if csize != size or usize != tar_size:
        raise _bad(f"checkpoints index {csize}/{usize} bytes, the layer has {size}/{tar_size}")
    if window != _WINDOW:
        raise _bad(f"checkpoint window of {window} bytes, want {_WINDOW}")
    if count * _GZIDX_POINT.size > len(data):
        raise _bad(f"{count} checkpoints do not fit in {len(data)} bytes")
    points = []
    windows = 0
    offset, position = 0, 0
    for number in range(count):
        cmp, uncmp, bits, has = _GZIDX_POINT.unpack_from(
            data, _GZIDX_HEAD.size + number * _GZIDX_POINT.size
        )
        if cmp < offset or cmp > size or uncmp < position or uncmp > tar_size:
            raise _bad(f"checkpoint {number} at {cmp}/{uncmp} is out of order or past the layer")
        if bits > 7 or has > 1 or (bits and cmp == 0):
            raise _bad(f"checkpoint {number} is malformed")
        offset, position = cmp, uncmp
        windows += has
        points.append(Checkpoint(cmp, uncmp, bits))
    want = _GZIDX_HEAD.size + count * _GZIDX_POINT.size + windows * window
    if want != len(data):
        raise _bad(f"checkpoints have {len(data)} bytes, their points need {want}")
    return tuple(points)


def span_bounds(points: tuple[Checkpoint, ...], size: int, *, span: int = SPAN) -> list[int]:
    """Where the spans of a ``size``-byte blob start: at each checkpoint, and every ``span``."""
    cuts = sorted({0, *(p.offset for p in points if p.offset < size)})
    starts: list[int] = []
    for here, after in zip(cuts, [*cuts[1:], size], strict=True):
        starts.extend(range(here, after, span))
    return starts if size else []


def build_artifact(index: LayerIndex, blob: Path, checkpoints: bytes) -> LayerArtifact:
    """The artifact of the stored ``index`` of the verified local blob ``blob``.

    Reads the blob once, hashing its spans.  BadImage for an index of a
    format not published (zstd, eStargz).
    """
    if index.compression not in COMPRESSIONS:
        raise BadImage(f"layer {index.digest}: a {index.compression} index is not published")
    size = blob.stat().st_size
    points = parse_checkpoints(checkpoints, size, index.tar_size) if checkpoints else ()
    starts = span_bounds(points, size)
    spans = []
    with blob.open("rb") as stream:
        for start, after in zip(starts, [*starts[1:], size], strict=True):
            data = stream.read(after - start)
            if len(data) != after - start:
                raise BadImage(f"layer {index.digest}: {blob} shrank while it was read")
            spans.append(Span(start, after - start, hashlib.sha256(data).hexdigest()))
    return LayerArtifact(index.digest, size, index, checkpoints, tuple(spans))
