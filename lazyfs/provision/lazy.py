"""Mount before pulling: which layers of an image stay remote, and the blob source that says so.

For the fuse backend, a Docker registry image is fetched with
``DockerProvider.fetch_lazy``: its manifest and config, and the blobs of
the layers no daemon can read by range. The layers whose blobs are not in
the store afterwards are remote (``remote_origins``): their registry is the
image reference's host and repository, which the cache daemon reads them
from with its own credentials. ``LazyBlobs`` is the store's blob source
with that knowledge attached (``lazyfs.cache.remote.RemoteAware``), which
the fuse backend hands to the mount.

Other backends, and images with every blob present, get the store's blob
source as before.

A layer the cache daemon has fetched whole in the background and found
complete (``lazyfs.cache.blobstate``) is no longer remote: ``blobs_for``
copies it from the cache files into the store first, verified by digest and
diff_id as every ingest is, so it is local like any pulled layer. Complete
says only that the bytes hash to the digest: the diff_id this image says is
checked here, per image, and a layer that fails it stays remote (its reads
refused by the cache client, which compares the same).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from lazyfs.cache.remote import executable_paths, trace_key
from lazyfs.fs.mount import DaemonSpec, Remote, RemoteOrigin, open_complete
from lazyfs.progress import Progress
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import LazyfsError, NotFound
from providers.image_pb2 import Image
from providers.manifest import ImageManifest, Layer
from providers.reference import parse_reference
from providers.source import LocalBlobSource

LAZY_BACKENDS = frozenset({"fuse"})
log = logging.getLogger(__name__)


@runtime_checkable
class LazyProvider(Protocol):
    async def fetch_lazy(self, image: Image, progress: Progress) -> ImageManifest:
        """``fetch``, leaving in the registry the layers that can be read by range."""
        ...


class LazyBlobs:
    """``StoreBlobs`` and the layers of one image that are still in its registry."""

    def __init__(self, blobs: StoreBlobs, remote: Remote) -> None:
        self.blobs = blobs
        self.remote = remote

    def open(self, digest: Digest) -> BinaryIO:
        return self.blobs.open(digest)

    def read_range(self, digest: Digest, offset: int, length: int) -> bytes:
        return self.blobs.read_range(digest, offset, length)

    def local_blob(self, layer: Layer) -> Path:
        return self.blobs.local_blob(layer)


def remote_origins(store: Store, manifest: ImageManifest) -> dict[Digest, RemoteOrigin]:
    """The layers of ``manifest`` not in ``store``, with their registry. Blocking."""
    missing = [layer.digest for layer in manifest.layers if not store.has_blob(layer.digest)]
    if not missing:
        return {}
    ref = parse_reference(manifest.reference)
    origin = RemoteOrigin(ref.registry, ref.repository)
    return dict.fromkeys(missing, origin)


def blobs_for(
    backend: str,
    blobs: StoreBlobs,
    manifest: ImageManifest,
    daemon: DaemonSpec | None,
    command: Sequence[str] | None = None,
) -> LocalBlobSource:
    """What ``backend`` reads ``manifest``'s layers from: for fuse, with the remote ones. Blocking.

    A layer missing from the store is remote only for a lazy backend with a
    daemon to read it; for any other, the store's source says NotFound.
    With ``command`` (what the container will run; empty: the image's Cmd)
    the mount records or replays the prefetch trace of the image and that
    command (``lazyfs.cache.remote.trace_key``); without, it does neither.
    """
    if backend not in LAZY_BACKENDS or daemon is None:
        return blobs
    adopt_complete(blobs.store, daemon.cache_dir, manifest)
    origins = remote_origins(blobs.store, manifest)
    if not origins:
        return blobs
    trace = None
    executable: tuple[str, ...] = ()
    if command is not None:
        config = manifest.config
        argv = (*config.entrypoint, *(command or config.cmd))
        trace = trace_key(
            manifest.digest, config.entrypoint, command or config.cmd, config.working_dir
        )
        executable = executable_paths(argv, config.env, config.working_dir)
    return LazyBlobs(blobs, Remote(daemon, origins, trace, executable))


def adopt_complete(store: Store, cache_dir: Path, manifest: ImageManifest) -> list[Digest]:
    """Copy into ``store`` the layers of ``manifest`` the cache holds whole and verified.

    Returns the layers copied. A copy that fails (a chunk evicted meanwhile,
    bytes that do not verify) is logged, and the layer stays remote. A layer
    the store already has is held to this image's diff_id: DigestMismatch
    when it is not. Blocking.
    """
    adopted = []
    for layer in manifest.layers:
        if store.has_blob(layer.digest):
            # Another image may have brought it: this one is held to its own
            # diff_id all the same (DigestMismatch), as a pull of it would be.
            store.ingest(layer, partial(_gone, layer))
            continue
        stream = open_complete(cache_dir, layer.digest)
        if stream is None:
            continue
        stream.close()
        try:
            store.ingest(layer, partial(_reopen, cache_dir, layer))
        except LazyfsError as error:
            log.warning("layer %s stays remote: copying it from the cache: %s", layer.digest, error)
            continue
        adopted.append(layer.digest)
    return adopted


def _gone(layer: Layer) -> BinaryIO:
    raise NotFound(f"layer {layer.digest} left the store", digest=layer.digest)


def _reopen(cache_dir: Path, layer: Layer) -> BinaryIO:
    stream = open_complete(cache_dir, layer.digest)
    if stream is None:
        raise NotFound(f"layer {layer.digest} left the cache", digest=layer.digest)
    return stream


def remote_digests(blobs: LocalBlobSource) -> tuple[Digest, ...]:
    """The layers ``blobs`` leaves in a registry, for the provisioner's record."""
    if isinstance(blobs, LazyBlobs):
        return tuple(blobs.remote.origins)
    return ()
