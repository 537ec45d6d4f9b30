"""The tables of contents of a mount's eStargz layers, asked of the daemon before the mount asks.

A mount process indexes each eStargz layer from its footer and TOC, the
blob's last bytes (``lazyfs.index.stored_remote.ensure_remote_index``): the first
thing it reads, once it has loaded its code, a few tenths of a second after
it was started. The one who started it knows the layers already: with
``ask_tails`` it has the daemon fetch every such layer's tail while the
mount process loads, so that its reads find them cached or in flight. The
mount process asks for the others' tails at its first read too
(``CacheClient._ask_tails``); a tail asked twice is fetched once.

A tail is small (``TAIL_SIZE``): the footer, and the whole TOC of a small
layer. A bigger TOC starts before it; its start is in the footer
(``toc_start``, the index's footer parser, given by the caller), so once
the tails are in, the rest of each TOC member is asked for, all layers at
once: the bytes the mount reads and no more, one round trip later. A
generous tail instead (1 MiB) moved 2.1 MB for 0.4 MB of TOCs on the
bench's image.

Asked only of layers with a TOC digest (``TOC_DIGEST_ANNOTATION``: others
are not indexed from their tail) and a size, and not of one the store has
indexed from a TOC before (``STORE/layers/<hex>/estargz-tocs``, see
``lazyfs.index.estargz_store``): that mount reads no tail. A hint: a daemon
that does not take it is logged, never raised. Blocking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.cache.remote import RemoteOrigin
from providers.digest import Digest, hex_part
from providers.manifest import TOC_DIGEST_ANNOTATION, Layer

if TYPE_CHECKING:
    from lazyfs.cache.client import CacheClient

log = logging.getLogger(__name__)

# ``lazyfs.index.estargz_footer.SUGGESTED_TAIL_SIZE``: what the index reads
# first (this package loads no index code). A TOC past it is read on after.
TAIL_SIZE = 64 << 10
# The most of a TOC member asked for ahead: a bigger one is left to the mount, which
# refuses a TOC past 128 MiB (``lazyfs.index.estargz_toc.TocLimits``) unread.
MAX_TOC_AHEAD = 64 << 20
# ``lazyfs.index.estargz_store.TOCS_DIR``: where the store keeps remote eStargz indexes.
TOCS_DIR = "estargz-tocs"


def tail_layers(
    store: Path, layers: Sequence[Layer], origins: Mapping[Digest, RemoteOrigin]
) -> list[Layer]:
    """The layers of ``layers`` whose tails a mount of them will read first."""
    return [
        layer
        for layer in layers
        if layer.digest in origins
        and layer.size
        and TOC_DIGEST_ANNOTATION in dict(layer.annotations)
        and not (store / "layers" / hex_part(layer.digest) / TOCS_DIR).exists()
    ]


def ask_tails(
    cache_dir: Path,
    store: Path,
    layers: Sequence[Layer],
    origins: Mapping[Digest, RemoteOrigin],
    toc_start: Callable[[bytes, int], int | None] | None = None,
) -> int:
    """Have the daemon of ``cache_dir`` fetch the tails the mount will read; chunks queued.

    With ``toc_start`` (a blob's tail and size -> where its TOC member
    starts, None if it cannot tell), waits for the tails, then asks for the
    TOC members that start before them (up to ``MAX_TOC_AHEAD`` each).
    """
    wanted = tail_layers(store, layers, origins)
    if not wanted:
        return 0
    client = hint_client(cache_dir, wanted, origins)
    try:
        queued = client.prefetch_tails([layer.digest for layer in wanted], TAIL_SIZE)
        # Even with none queued: the mount process may have asked for them first.
        if toc_start is not None:
            queued += _ask_members(client, wanted, toc_start)
        return queued
    finally:
        client.close()


def hint_client(
    cache_dir: Path, layers: Sequence[Layer], origins: Mapping[Digest, RemoteOrigin]
) -> CacheClient:
    """A client of the daemon of ``cache_dir`` for ``layers`` (each in ``origins``), to ask
    ahead of a mount: it waits for no daemon that is gone (the mount waits for it as ever),
    and says so at INFO only (this process's warnings reach the user's terminal)."""
    # Loaded only here: the mount API that calls this stays light otherwise.
    from lazyfs.cache.client import CacheClient, remote_blob

    blobs = {
        layer.digest: remote_blob(
            origins[layer.digest].host, origins[layer.digest].repository, layer
        )
        for layer in layers
    }
    return CacheClient(cache_dir, blobs, wait=0.0, hint=True)


def _ask_members(
    client: CacheClient, layers: Sequence[Layer], toc_start: Callable[[bytes, int], int | None]
) -> int:
    """Ask for each layer's TOC member before its tail; chunks queued. A hint: errors logged."""
    queued = 0
    for layer in layers:
        tail_start = max(0, layer.size - TAIL_SIZE)
        try:
            # In flight already: all of them arrive in about one round trip.
            start = toc_start(client.read_range(layer.digest, tail_start, TAIL_SIZE), layer.size)
            # A footer is image content: a member past the bound is the mount's to refuse.
            if start is not None and 0 <= start < tail_start <= start + MAX_TOC_AHEAD:
                queued += client.prefetch(layer.digest, start, tail_start - start)
        except Exception as error:  # the mount reads what it needs, and says why it cannot
            log.info("layer %s: its TOC was not asked for ahead: %s", layer.digest, error)
            break
    return queued
