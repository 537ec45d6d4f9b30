"""The tables of contents of a mount's eStargz layers, asked of the daemon before the mount asks.

A mount process indexes each eStargz layer from its footer and TOC, the
blob's last bytes (``lazyfs.index.stored.ensure_remote_index``): the first
thing it reads, once it has loaded its code, a few tenths of a second after
it was started. The one who started it knows the layers already: with
``ask_tails`` it has the daemon fetch every such layer's tail while the
mount process loads, so that its reads find them cached or in flight. The
mount process asks for the others' tails at its first read too
(``CacheClient._ask_tails``); a tail asked twice is fetched once.

Asked only of layers with a TOC digest (``TOC_DIGEST_ANNOTATION``: others
are not indexed from their tail) and a size, and not of one the store has
indexed from a TOC before (``STORE/layers/<hex>/estargz-tocs``, see
``lazyfs.index.estargz_store``): that mount reads no tail. A hint: a daemon
that does not take it is logged, never raised. Blocking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lazyfs.cache.remote import RemoteOrigin
from providers.digest import Digest, hex_part
from providers.manifest import TOC_DIGEST_ANNOTATION, Layer

# ``lazyfs.index.estargz_footer.SUGGESTED_TAIL_SIZE``: what the index reads
# first (this package loads no index code). A TOC past it is read on after.
TAIL_SIZE = 1 << 20
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
) -> int:
    """Have the daemon of ``cache_dir`` fetch the tails the mount will read; chunks queued."""
    wanted = tail_layers(store, layers, origins)
    if not wanted:
        return 0
    # Loaded only here: the mount API that calls this stays light otherwise.
    from lazyfs.cache.client import CacheClient, remote_blob

    blobs = {
        layer.digest: remote_blob(
            origins[layer.digest].host, origins[layer.digest].repository, layer
        )
        for layer in wanted
    }
    # Not waiting for a daemon that is gone: the mount waits for it as ever.
    client = CacheClient(cache_dir, blobs, wait=0.0)
    try:
        return client.prefetch_tails([layer.digest for layer in wanted], TAIL_SIZE)
    finally:
        client.close()
