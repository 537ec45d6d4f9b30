"""Building a layer's index artifact (``lazyfs.index.artifact``) from its verified local blob.

The store keeps gzip checkpoints every MiB of tar stream (what a local read
wants: ``lazyfs.index.gzip_checkpoints``).  A published index is read over a
network, where the compressed bytes between two checkpoints are what one
read costs, so its checkpoints are made anew, closer (``SPACING``): their
windows cost nothing until a read inflates from them, and then about 12 KiB
each, compressed.

zran (``indexed_gzip``) finds the checkpoints; it checks no CRC, which does
not matter here: the blob is the store's, verified against its digest, and
zran must agree with the stored index on the stream's length.  The digest
of each interval is taken from Python's inflater (which checks the CRC).
A gzip blob of several members is not published (this code does not
expect one): such a layer is pulled whole.

Blocking (reads the blob three times: zran's pass, the interval digests'
and the span digests').
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
import zlib
from pathlib import Path

from lazyfs.index.artifact import COMPRESSIONS, WINDOW, LayerArtifact, Point, Span, first_byte
from lazyfs.index.model import LayerIndex
from providers.digest import digest_bytes
from providers.errors import BadImage

# Tar stream between two checkpoints of a published index.  Smaller spans
# mean fewer bytes a read needs and more points in the head (some 150 bytes
# each) and windows in the windows blob (fetched only as needed).
SPACING = 256 << 10
# The span length where checkpoints are sparse, and for tar layers.
SPAN = 1 << 20
_READ = 1 << 20

_GZIDX = b"GZIDX"
_GZIDX_HEAD = struct.Struct("<5sBBQQIII")
_GZIDX_POINT = struct.Struct("<QQBB")


def span_bounds(points: tuple[Point, ...], size: int, *, span: int = SPAN) -> list[int]:
    """Where the spans of a ``size``-byte blob start: each point's first byte, every ``span``."""
    cuts = sorted({0, *(first_byte(p) for p in points if first_byte(p) < size)})
    starts: list[int] = []
    for here, after in zip(cuts, [*cuts[1:], size], strict=True):
        starts.extend(range(here, after, span))
    return starts if size else []


def build_artifact(
    index: LayerIndex, blob: Path, *, spacing: int = SPACING
) -> tuple[LayerArtifact, bytes] | None:
    """The artifact of the stored ``index`` of the verified local ``blob``, and its windows blob.

    None for a gzip blob of several members (not published).  BadImage for
    an index of a format not published (zstd, eStargz), or a blob zran
    reads otherwise than the index says.
    """
    if index.compression not in COMPRESSIONS:
        raise BadImage(f"layer {index.digest}: a {index.compression} index is not published")
    size = blob.stat().st_size
    points: tuple[Point, ...] = ()
    windows = b""
    if index.compression == "gzip":
        found = _checkpoints(blob, index, size, spacing)
        if found is None:
            return None
        points, windows = found
        digests = _interval_digests(blob, [p.position for p in points], index.tar_size)
        if digests is None:
            return None
        points = tuple(
            dataclasses.replace(p, sha256=d) for p, d in zip(points, digests, strict=True)
        )
    starts = span_bounds(points, size)
    spans = []
    with blob.open("rb") as stream:
        for start, after in zip(starts, [*starts[1:], size], strict=True):
            data = stream.read(after - start)
            if len(data) != after - start:
                raise BadImage(f"layer {index.digest}: {blob} shrank while it was read")
            spans.append(Span(start, after - start, hashlib.sha256(data).hexdigest()))
    artifact = LayerArtifact(
        index.digest,
        size,
        dataclasses.replace(index, checkpoints_size=0),  # the points are in the head
        tuple(spans),
        points,
        digest_bytes(windows) if windows else None,
        len(windows),
    )
    return artifact, windows


def _interval_digests(blob: Path, positions: list[int], tar_size: int) -> list[str] | None:
    """The sha256 of the tar stream between each two ``positions`` and from the last to the end.

    None unless the gzip blob is one member, with nothing after it, of
    ``tar_size`` bytes.
    """
    cuts = [*positions[1:], tar_size]
    digests: list[str] = []
    hashing = hashlib.sha256()
    at = 0
    inflater = zlib.decompressobj(31)

    def take(out: bytes) -> None:
        nonlocal hashing, at
        while out:
            piece = out[: cuts[len(digests)] - at] if len(digests) < len(cuts) else out
            hashing.update(piece)
            at += len(piece)
            out = out[len(piece) :]
            if len(digests) < len(cuts) and at == cuts[len(digests)]:
                digests.append(hashing.hexdigest())
                hashing = hashlib.sha256()

    with blob.open("rb") as stream:
        while piece := stream.read(_READ):
            if inflater.eof:
                return None
            try:
                take(inflater.decompress(piece, _READ))
                while inflater.unconsumed_tail:
                    take(inflater.decompress(inflater.unconsumed_tail, _READ))
            except zlib.error:
                return None
    if not inflater.eof or inflater.unused_data or at != tar_size:
        return None
    return digests if len(digests) == len(positions) else None


def _checkpoints(
    blob: Path, index: LayerIndex, size: int, spacing: int
) -> tuple[tuple[Point, ...], bytes] | None:
    """zran's checkpoints of ``blob`` every ``spacing`` bytes, and their windows blob.

    None for a blob of several members (zran starts each with a point of no window).
    """
    from indexed_gzip import IndexedGzipFile

    out = io.BytesIO()
    try:
        zran = IndexedGzipFile(filename=str(blob), spacing=spacing, readbuf_size=_READ)
        try:
            zran.build_full_index()
            zran.export_index(fileobj=out)  # to memory: see gzip_checkpoints' export
        finally:
            zran.close()
    except (OSError, ValueError) as error:
        raise BadImage(f"layer {index.digest}: cannot checkpoint it: {error}") from error
    data = out.getvalue()
    magic, version, _flags, csize, usize, _spacing, window, count = _GZIDX_HEAD.unpack_from(data)
    if magic != _GZIDX or version != 1 or window != WINDOW:
        raise BadImage(f"layer {index.digest}: zran exported an index this code does not read")
    if csize != size or usize != index.tar_size:
        raise BadImage(
            f"layer {index.digest}: zran reads {csize}/{usize} bytes, the index {size}/"
            f"{index.tar_size}"
        )
    at = _GZIDX_HEAD.size + count * _GZIDX_POINT.size
    points: list[Point] = []
    windows = bytearray()
    for number in range(count):
        cmp, uncmp, bits, has = _GZIDX_POINT.unpack_from(
            data, _GZIDX_HEAD.size + number * _GZIDX_POINT.size
        )
        raw = data[at : at + window] if has else None
        at += window if has else 0
        if uncmp >= index.tar_size or (points and uncmp <= points[-1].position):
            continue  # the stream's end: nothing to read from there
        if raw is None and uncmp != 0:
            return None
        if raw is not None and uncmp == 0:
            raise BadImage(f"layer {index.digest}: zran's checkpoint {number} is not as expected")
        ref = None
        if raw is not None:
            packed = zlib.compress(raw, 9)
            ref = Span(len(windows), len(packed), hashlib.sha256(packed).hexdigest())
            windows += packed
        points.append(Point(cmp, uncmp, bits, "", ref))  # its interval's digest comes next
    return tuple(points), bytes(windows)
