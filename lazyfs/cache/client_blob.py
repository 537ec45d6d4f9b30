"""A blob as a cache client reads it: where the daemon fetches it from, and how."""

from __future__ import annotations

from dataclasses import dataclass

from lazyfs.cache.values import Origin, RegistryOrigin
from providers.digest import Digest
from providers.manifest import INDEX_BLOB_ANNOTATION, TOC_DIGEST_ANNOTATION, Layer


@dataclass(frozen=True)
class RemoteBlob:
    """Where the daemon fetches a blob from, and its size when the manifest says it."""

    origin: Origin
    size: int | None = None
    diff_id: Digest | None = None
    media_type: str = ""
    # Read by exact ranges (an eStargz layer's chunks): the daemon reads nothing ahead.
    exact: bool = False
    # Its ranges read and asked as pieces (``lazyfs.cache.pieces``): a windows blob's, which a
    # trace replayed leaves out (``lazyfs.blobs.trace_run.client_steps``).
    piece: bool = False


def remote_blob(host: str, repository: str, layer: Layer) -> RemoteBlob:
    """Layer ``layer`` of the registry repository ``host``/``repository``, as a client reads it."""
    exact = bool({TOC_DIGEST_ANNOTATION, INDEX_BLOB_ANNOTATION} & dict(layer.annotations).keys())
    return RemoteBlob(
        RegistryOrigin(host, repository), layer.size, layer.diff_id, layer.media_type, exact
    )
