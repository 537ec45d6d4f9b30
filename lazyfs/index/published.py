"""Indexes fetched from a registry (published beside an image), kept by layer and index blob.

A published index (``lazyfs.index.artifact``) of a gzip or tar layer lets
a mount read the layer from its registry by range, before the blob has
arrived.  Nothing but its own digest and the layer digest it names ties it
to the layer: any image can publish an index for any layer digest.  So, as
eStargz indexes are kept by TOC (``lazyfs.index.estargz_store``), each
(layer digest, index blob digest) pair has a layers dir of its own::

    <layers_dir>/<layer hex>/published-indexes/<blob algorithm>-<blob hex>/
        <layer hex>/index.json, spans

``index.json`` is the store's index format (``lazyfs.index.model``),
``spans`` the span digests, the blob's size and (gzip) the checkpoints
and the windows blob that holds their windows (fetched by range as reads
need them, never kept here); the index is written last, so a present one
implies the spans.  ``load_index`` and ``index_source`` of
``lazyfs.index.stored`` read it there unchanged; ``index_source`` tells
such an index from one built here (see ``PUBLISHED_DIR``), so a merged tree
kept from a published index is never taken for one built from the blob.

A layer that is to be read from its published index carries the index
blob's digest in its descriptor's annotations (``INDEX_BLOB_ANNOTATION``,
set by the provider that fetched and stored it, never taken from a
registry's manifest).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from lazyfs.index.artifact import LayerArtifact, Point, Span
from lazyfs.index.model import INDEX_NAME, LayerIndex, dumps, header_line, loads
from lazyfs.store.atomic import write_atomic
from providers.digest import Digest, algorithm, hex_part, parse_digest
from providers.errors import BadImage
from providers.manifest import INDEX_BLOB_ANNOTATION, Layer
from providers.private_dir import private_dir

PUBLISHED_DIR = "published-indexes"
SPANS_NAME = "spans"
# Beside a kept index a mount refused (``set_aside``): not read, not fetched again.
SET_ASIDE_NAME = "set-aside"


@dataclass(frozen=True)
class PublishedData:
    """What a layer read through its published index needs besides the index.

    ``points`` are the gzip checkpoints (None for a tar layer), their
    windows in the blob ``windows`` (``windows_size`` bytes); ``spans`` the
    blob's spans and their digests; ``size`` the blob's length, ``tar_size``
    the tar stream's.
    """

    points: tuple[Point, ...] | None
    spans: tuple[Span, ...]
    size: int
    tar_size: int = 0
    windows: Digest | None = None
    windows_size: int = 0

    @cached_property
    def starts(self) -> list[int]:
        """Where each span starts, for bisection."""
        return [span.offset for span in self.spans]

    @cached_property
    def bounds(self) -> list[int]:
        """Where each checkpoint is in the tar stream, then its end: the intervals' bounds."""
        return [*(point.position for point in self.points or ()), self.tar_size]


def published_layers_dir(layers_dir: Path, layer: Digest, blob: Digest) -> Path:
    """The layers dir holding the index of ``layer`` published as the blob ``blob``."""
    return layers_dir / hex_part(layer) / PUBLISHED_DIR / f"{algorithm(blob)}-{hex_part(blob)}"


def index_blob(layer: Layer) -> Digest | None:
    """The published index blob ``layer``'s descriptor names; None when it names none.

    BadImage for an annotation that is no digest.
    """
    text = layer.annotation(INDEX_BLOB_ANNOTATION)
    return None if text is None else parse_digest(text)


def store_published(
    layers_dir: Path, blob: Digest, artifact: LayerArtifact, *, text: bytes | None = None
) -> Path:
    """Keep the verified ``artifact`` (of index blob ``blob``); its layers dir.

    ``text``: the layer index's text that ``artifact.index`` was parsed from
    (``lazyfs.index.artifact.decode_text``), kept as it is where it can be
    (``_index_text``), not encoded again.  Idempotent: the same blob gives
    the same files.  Each file is written atomically, the index last.
    """
    where = published_layers_dir(layers_dir, artifact.layer, blob)
    home = where / hex_part(artifact.layer)
    private_dir(home)
    spans = {
        "size": artifact.layer_size,
        "spans": [list(_row(s)) for s in artifact.spans],
        "points": [
            [p.offset, p.position, p.bits, p.sha256, *(_row(p.window) if p.window else ())]
            for p in artifact.points
        ],
        "windows": artifact.windows,
        "windows_size": artifact.windows_size,
    }
    write_atomic(home / SPANS_NAME, json.dumps(spans).encode(), mode=0o600)
    write_atomic(home / INDEX_NAME, _index_text(artifact.index, text), mode=0o600)
    return where


def _index_text(index: LayerIndex, text: bytes | None) -> bytes:
    """What the store keeps of ``index``: ``text``, the text it was parsed from, when that
    reads back the same and its first line is ``dumps``'s; else ``dumps``'s.

    The file is read as UTF-8 with universal newlines, and a reader wanting
    where the bytes are reads its first line only (``loads(entries=False)``).
    So the text is kept as it is only when it is ASCII, its first line is
    the header ``dumps`` writes for the index (about 200 bytes, whatever
    the publisher sent), and it has no other line, no carriage return or
    tab, and no run of spaces, the cheapest padding there is.  The rest may
    still be larger than ``dumps`` would write it (values ``loads`` reads
    past, such as an ``rdev`` of three items or ``420.0`` for 420): bounded,
    as before, by what a published index may inflate to (``MAX_INDEX``).
    """
    head = header_line(index).encode() + b"\n"
    if (
        text is not None
        and text.startswith(head)
        and text.endswith(b"\n")
        and text.count(b"\n") == 2
        and text.isascii()
        and b"\r" not in text
        and b"\t" not in text
        and b"  " not in text
    ):
        return text
    return dumps(index).encode()


def keep_here(layer: Layer, blob: Digest, artifact: LayerArtifact) -> None:
    """Hold ``artifact`` (of index blob ``blob``, checked, kept in the store) in this process
    for ``take_kept``: the start that kept it asks for its program from it, then takes it.

    Held until taken or ``forget_kept``: a provision keeps the indexes of one image, and
    the start of its mount takes or forgets them all. At most ``MAX_HELD_ENTRIES``
    entries in all (an index is image content): past them, the start reads it again.
    """
    global _held_entries
    entries = len(artifact.index.entries)
    with _HERE_LOCK:
        if _held_entries + entries > MAX_HELD_ENTRIES:
            return
        _held_entries += entries
    data = PublishedData(
        artifact.points or None, artifact.spans, artifact.layer_size, artifact.index.tar_size,
        artifact.windows, artifact.windows_size,
    )  # fmt: skip
    with _HERE_LOCK:
        _HERE[(layer.digest, blob)] = (artifact.index, data)


def take_kept(layer: Layer) -> tuple[LayerIndex, PublishedData] | None:
    """The index ``layer``'s descriptor names and its data, if this process kept it
    (``keep_here``), no longer held; else None."""
    blob = index_blob(layer)
    with _HERE_LOCK:
        return None if blob is None else _HERE.pop((layer.digest, blob), None)


def forget_kept() -> None:
    """Let go of every index ``keep_here`` holds."""
    global _held_entries
    with _HERE_LOCK:
        _HERE.clear()
        _held_entries = 0


# What ``keep_here`` holds, by (layer, index blob); kept by several threads at once. Its
# entries are counted as held until ``forget_kept``, taken or not.
MAX_HELD_ENTRIES = 200_000
_HERE: dict[tuple[Digest, Digest], tuple[LayerIndex, PublishedData]] = {}
_HERE_LOCK = threading.Lock()
_held_entries = 0


def _row(span: Span) -> tuple[int, int, str]:
    return span.offset, span.length, span.sha256


def load_published(
    layers_dir: Path, layer: Layer, *, entries: bool = True
) -> tuple[LayerIndex, Path, PublishedData] | None:
    """The published index ``layer``'s descriptor names, its layers dir and data.

    None when it names none or the store does not hold it whole (the
    layer is then fetched whole instead).  The index must be of the layer
    and of a format read this way ("gzip" or "none").
    """
    blob = index_blob(layer)
    if blob is None:
        return None
    if is_set_aside(layers_dir, layer.digest, blob):
        return None  # a mount refused it: the layer is read whole
    where = published_layers_dir(layers_dir, layer.digest, blob)
    home = where / hex_part(layer.digest)
    try:
        with (home / INDEX_NAME).open(encoding="utf-8") as stream:
            text = stream.read() if entries else stream.readline()
        index = loads(text, entries=entries)
        doc = json.loads((home / SPANS_NAME).read_text(encoding="utf-8"))
        spans = tuple(Span(int(a), int(b), str(c)) for a, b, c in doc["spans"])
        size = int(doc["size"])
        points = tuple(_point(row) for row in doc["points"])
        windows = None if doc["windows"] is None else parse_digest(str(doc["windows"]))
        windows_size = int(doc["windows_size"])
    except (OSError, ValueError, KeyError, TypeError, BadImage):
        return None  # one kept by an older lazyfs, say: fetched again
    if index.digest != layer.digest or index.compression not in ("gzip", "none"):
        return None
    if (index.compression == "gzip") != bool(points):
        return None
    data = PublishedData(
        points if points else None, spans, size, index.tar_size, windows, windows_size
    )
    return index, where, data


def set_aside(layers_dir: Path, layers: Sequence[Layer]) -> list[Digest]:
    """Set aside the published indexes ``layers`` name (those ``layers_dir`` holds); their
    layers.

    For an index a mount refused (``lazyfs.fs.mount``): its entries passed the
    checks that need no other entry, and failed the tree's (a hardlink to no
    file, a file where a directory must be). It is neither read again, so that
    the mount reads the layer whole (``lazyfs.index.stored_remote``), nor
    fetched again (``lazyfs.publish.fetch``), however often it is listed.
    """
    done = []
    for layer in layers:
        blob = index_blob(layer)
        if blob is not None and published_layers_dir(layers_dir, layer.digest, blob).is_dir():
            _marker(layers_dir, layer.digest, blob).touch(mode=0o600)
            done.append(layer.digest)
    return done


def is_set_aside(layers_dir: Path, layer: Digest, blob: Digest) -> bool:
    """Whether the index of ``layer`` published as ``blob`` was set aside (``set_aside``)."""
    return _marker(layers_dir, layer, blob).exists()


def _marker(layers_dir: Path, layer: Digest, blob: Digest) -> Path:
    return published_layers_dir(layers_dir, layer, blob) / SET_ASIDE_NAME


def _point(row: list[object]) -> Point:
    offset, position, bits = (int(v) for v in row[:3])  # type: ignore[call-overload]
    window = None if len(row) == 4 else Span(int(row[4]), int(row[5]), str(row[6]))  # type: ignore[call-overload]
    return Point(offset, position, bits, str(row[3]), window)


def is_published(layers_dir: Path, digest: Digest) -> bool:
    """Whether ``layers_dir`` is the layers dir of a published index of ``digest``."""
    return (
        layers_dir.parent.name == PUBLISHED_DIR
        and (layers_dir / hex_part(digest) / SPANS_NAME).is_file()
    )


def check_artifact_layer(artifact: LayerArtifact, layer: Layer) -> None:
    """BadImage unless ``artifact`` indexes ``layer`` as its descriptor gives it."""
    if artifact.layer != layer.digest:
        raise BadImage(f"published index names layer {artifact.layer}, not {layer.digest}")
    if artifact.layer_size != layer.size:
        raise BadImage(
            f"published index of layer {layer.digest}: {artifact.layer_size} bytes,"
            f" the layer has {layer.size}"
        )
