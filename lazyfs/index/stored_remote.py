"""eStargz indexes kept in the store for layers whose blobs are not here.

``ensure_remote_index`` builds the index of such a layer from its footer
and TOC, read through a ``BlobSource`` and checked against the TOC digest
its descriptor gives, and stores it as ``lazyfs.index.stored.ensure_index``
stores an index (under an flock, its chunk table first, the index last),
by layer digest and TOC digest (``lazyfs.index.estargz_store``);
``ensure_remote_layer`` gives the chunk table it built with it.
``unindexed_toc`` says, cheaply, whether it would read a TOC. Blocking.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.index.estargz_chunks import loads as load_chunks
from lazyfs.index.estargz_footer import SUGGESTED_TAIL_SIZE
from lazyfs.index.formats import ESTARGZ
from lazyfs.index.model import CHUNKS_NAME, LayerIndex
from lazyfs.index.stored import (
    check_data_present,
    dump_chunks,
    load_index,
    source_of,
    store_files,
    toc_digest,
)
from providers.digest import Digest, hex_part
from providers.errors import BadImage
from providers.fslock import exclusive_lock
from providers.locked_temps import locked_scratch
from providers.manifest import Layer
from providers.private_dir import private_dir, private_file
from providers.source import BlobSource

if TYPE_CHECKING:
    from lazyfs.index.estargz_chunks import ChunkTable
    from lazyfs.index.estargz_toc import Toc
    from providers.layer_limits import LayerLimits


def ensure_remote_index(
    layers_dir: Path,
    tmp_dir: Path,
    layer: Layer,
    blobs: BlobSource,
    *,
    entries: bool = True,
    limits: LayerLimits | None = None,
    tail: int = SUGGESTED_TAIL_SIZE,
    toc: Toc | None = None,
) -> LayerIndex | None:
    """The index of the eStargz layer ``layer``, from its footer and TOC, stored if missing.

    None when the layer is not to be read lazily: its descriptor gives no
    TOC digest (it is a gzip layer to pull, eStargz or not: an unverifiable
    TOC is no TOC), or the store holds an index of another format for it
    (built from its whole blob, which the store then has: ``ensure_index``).
    Otherwise the footer and TOC are read through ``blobs`` (one range read
    of the blob's last ``tail`` bytes, a second only for a TOC that starts
    before them; none when the index is stored), checked against the TOC
    digest, and the index and its chunk table stored as ``ensure_index``
    stores an index, so the next call reads them back.  ``entries=False``
    as for ``ensure_index``.  ``toc``: the TOC, read and checked earlier
    (``lazyfs.index.estargz_index.fetch_toc``), used in place of reading it.

    Stored by layer digest and TOC digest
    (``lazyfs.index.estargz_store.remote_layers_dir``: read it back with
    ``load_index`` and ``check_data_present`` on that layers dir), so an
    image that names this layer digest with another TOC, hostile or not,
    neither changes this index nor is refused for it.

    Raises DigestMismatch for a TOC that is not the one the descriptor
    names; BadImage or UnsafeLayer for a layer indexing refuses (or a TOC
    digest annotation that is no digest); and what ``blobs.read_range``
    raises (NotFound, TemporaryFailure).  Nothing is stored then.
    """
    found = ensure_remote_layer(
        layers_dir, tmp_dir, layer, blobs, entries=entries, limits=limits, tail=tail, toc=toc
    )
    return None if found is None else found[0]


def ensure_remote_layer(
    layers_dir: Path,
    tmp_dir: Path,
    layer: Layer,
    blobs: BlobSource,
    *,
    entries: bool = True,
    limits: LayerLimits | None = None,
    tail: int = SUGGESTED_TAIL_SIZE,
    toc: Toc | None = None,
) -> tuple[LayerIndex, ChunkTable | None] | None:
    """``ensure_remote_index``, and the chunk table when this call built and stored it.

    A mount reads its layer through that table at once: it need not read
    back the file it has just written. None in its place when the index was
    stored already (``load_chunk_table`` reads it). A table built here is
    checked as ``load_chunk_table`` checks one, and refused as BadImage, with
    nothing stored.
    """
    from lazyfs.index.estargz_index import build_remote_index  # loads the tar rules

    place = _toc_place(layers_dir, layer)
    if place is None:
        return None
    expected, own = place
    digest = layer.digest
    found = load_index(own, digest, entries=entries)
    if found is not None and _remote_usable(own, found, expected):
        return found, None
    home = own / hex_part(digest)
    private_dir(home)
    with exclusive_lock(home / "lock"):
        found = load_index(own, digest)
        if found is not None and _remote_usable(own, found, expected):
            return found, None  # another process built it while we waited
        index, built = build_remote_index(layer, blobs, expected, tail=tail, limits=limits, toc=toc)
        dumped = dump_chunks(built)
        text = dumped.encode()
        # As a later mount loads it: the checks of every stored table (rows in
        # order, inside the blob, of digests) hold for this mount's reads too.
        try:
            table = load_chunks(dumped)
        except ValueError as error:
            raise BadImage(f"layer {digest}: its chunk table: {error}") from None
        index = dataclasses.replace(index, checkpoints_size=len(text))
        with locked_scratch(tmp_dir) as scratch:  # flocked: no cleaner takes it meanwhile
            with private_file(scratch / CHUNKS_NAME) as out:
                out.write(text)
            store_files(home, scratch, index)
    return index, table


def unindexed_toc(layers_dir: Path, layer: Layer) -> Digest | None:
    """The TOC digest of ``layer`` when ``ensure_remote_index`` would read its TOC: an eStargz
    layer with no usable index stored yet. None otherwise; cheap (index headers read)."""
    place = _toc_place(layers_dir, layer)
    if place is None:
        return None
    expected, own = place
    if _remote_usable(own, load_index(own, layer.digest, entries=False), expected):
        return None
    return expected


def _toc_place(layers_dir: Path, layer: Layer) -> tuple[Digest, Path] | None:
    """The TOC digest of ``layer`` and the layers dir of its index from that TOC; None
    when it has no TOC digest or the store has an index of another format for it."""
    from lazyfs.index.estargz_store import toc_layers_dir

    expected = toc_digest(dict(layer.annotations))
    if expected is None:
        return None
    whole = load_index(layers_dir, layer.digest, entries=False)
    if whole is not None and whole.compression != ESTARGZ.name:
        return None
    return expected, toc_layers_dir(layers_dir, layer.digest, expected)


def _remote_usable(layers_dir: Path, index: LayerIndex | None, expected: Digest) -> bool:
    """Whether ``index`` is an eStargz index, whole, built from the TOC ``expected``.

    Anything else in the TOC's own place is damage: it is built again.
    """
    if index is None or index.compression != ESTARGZ.name:
        return False
    try:
        data = check_data_present(layers_dir, Path(), index)
        with data.path.open(encoding="utf-8") as stream:
            stored, _ = source_of(stream.readline())
    except (BadImage, OSError, ValueError):
        return False  # built again, its table first
    return stored == expected
