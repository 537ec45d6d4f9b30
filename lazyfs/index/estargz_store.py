"""Where the store keeps the index of an eStargz layer read from a registry: by layer and TOC.

An eStargz index built by range reads (``lazyfs.index.stored_remote.ensure_remote_index``)
was checked against the TOC digest of the descriptor that named the layer,
never against the layer digest: until the whole blob has arrived, nothing
ties the bytes a registry served for a digest to that digest.  So any image
can name any layer digest with a TOC of its own, and a hostile one that is
read first must not decide what a victim's image shows, nor make its mount
fail.  Each (layer digest, TOC digest) pair has its own index, under::

    <layers_dir>/<layer hex>/estargz-tocs/<toc algorithm>-<toc hex>/   a layers dir of its own
        <layer hex>/index.json, estargz-chunks, lock

``remote_layers_dir`` names that inner layers dir, so every function of
``lazyfs.index.stored`` that takes a layers dir (``load_index``,
``check_data_present``, ``index_source``, ``load_chunk_table``) reads a
remote index there unchanged.  Two images that agree on the TOC share the
index; images that disagree never see each other's.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lazyfs.index.estargz import toc_digest
from providers.digest import Digest, algorithm, hex_part
from providers.manifest import Layer

TOCS_DIR = "estargz-tocs"


def toc_layers_dir(layers_dir: Path, digest: Digest, toc: Digest) -> Path:
    """The layers dir holding the index of layer ``digest`` built from the TOC ``toc``."""
    return layers_dir / hex_part(digest) / TOCS_DIR / f"{algorithm(toc)}-{hex_part(toc)}"


def remote_layers_dir(layers_dir: Path, layer: Layer) -> Path | None:
    """Where ``layer``'s remote eStargz index lives, or None when it names no TOC digest.

    Raises BadImage for a TOC digest annotation that is no digest.
    """
    annotations: Mapping[str, str] = dict(layer.annotations)
    toc = toc_digest(annotations)
    return None if toc is None else toc_layers_dir(layers_dir, layer.digest, toc)
