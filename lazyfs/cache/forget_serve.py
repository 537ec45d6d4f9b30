"""The daemon's side of a forget (``ForgetRequest``; ``lazyfs.cache.forget`` asks it):
``let_go`` of the blobs of removed layers, and the blobs a status lists then (``listed``).

Part of ``lazyfs.cache.daemon``'s ``Server``, apart for its size. In the trio thread.
"""

from __future__ import annotations

import logging

import trio

from lazyfs.cache.background import Backgrounds
from lazyfs.cache.blobstate import forget_complete
from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.forget_values import Forget, ForgetOk
from lazyfs.cache.pieces import Pieces
from lazyfs.cache.values import BlobInfo, BlobKind

log = logging.getLogger(__name__)


async def let_go(
    cache: DiskCache, pieces: Pieces | None, backgrounds: Backgrounds | None, request: Forget
) -> ForgetOk:
    """Drop the pieces of the blobs ``request`` names, their chunks but those pinned or being
    read, and a complete verdict; and refuse their chunks until a request names them again
    (``DiskCache.release``), so that a fetch of one under way stops at its next chunk."""
    chunks = freed = 0
    for digest in request.digests:
        if backgrounds is not None:
            backgrounds.forget(digest)  # nor a job's state, which would outlive its verdict
        if pieces is not None:
            chunks += pieces.evict(digest, 0, 1 << 63)
        # Unlinks: in a worker thread, not the one reads are answered in. Safe there, as a
        # drop would not be (``Backgrounds._drop``): a reader pins its chunks before it looks
        # them up, and a release leaves pinned ones.
        dropped, size = await trio.to_thread.run_sync(cache.release, digest)
        await trio.to_thread.run_sync(forget_complete, cache.layout.root, digest)
        chunks, freed = chunks + dropped, freed + size
    log.info("let go of %d blobs whose layers were removed: %d chunks or pieces, %d bytes",
             len(request.digests), chunks, freed)  # fmt: skip
    return ForgetOk(request.id, chunks, freed)


def listed(cache: DiskCache, backgrounds: Backgrounds | None) -> tuple[BlobInfo, ...]:
    """The blobs a status lists: not one let go of with nothing left of it but its background
    job (stopped, or about to), unless it is quarantined."""
    if backgrounds is None:
        return ()
    return tuple(info for info in backgrounds.infos()
                 if info.cached_bytes or info.kind is BlobKind.QUARANTINED
                 or not cache.unwanted(info.digest))  # fmt: skip
