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

A remote layer is made local off the start's path: once the mount is up,
``start_adopting`` leaves a detached process (``lazyfs.provision.adopt``)
that copies each layer into the store as the cache daemon's background
fetch completes it (``adopt_complete``: digest and diff_id checked, as
every ingest is), so a later start finds it local like any pulled layer.
A start that finds a layer complete but not yet copied mounts it remote,
every read a hit in the cache: copying it first would hold the start for
as long as the blob takes to inflate and hash. A layer already in the
store is held to this image's diff_id at the start (a recorded diff_id:
a file read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from lazyfs.cache.remote import executable_paths, trace_key
from lazyfs.fs.mount import DaemonSpec, Remote, RemoteOrigin
from lazyfs.progress import Progress
from lazyfs.provision.adopt import hold_stored
from lazyfs.provision.adopt_spawn import adopt_later
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.image_pb2 import Image
from providers.manifest import ImageManifest, Layer
from providers.reference import parse_reference
from providers.source import LocalBlobSource

if TYPE_CHECKING:
    from lazyfs.images.docker_published import TraceHook
    from providers.layer_limits import LayerLimits

LAZY_BACKENDS = frozenset({"fuse"})
log = logging.getLogger(__name__)


@runtime_checkable
class LazyProvider(Protocol):
    async def fetch_lazy(
        self,
        image: Image,
        progress: Progress,
        ahead: Callable[[], None] | None = None,
        traced: TraceHook | None = None,
    ) -> ImageManifest:
        """``fetch``, leaving in the registry the layers that can be read by range; ``ahead``
        runs in a thread when it goes to a registry for them, ``traced`` once the trace
        of its key was looked for beside the image and its indexes listed, given the
        layers read by range, if any (``ReplayAhead``)."""
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
    working_dir: str = "",
) -> LocalBlobSource:
    """What ``backend`` reads ``manifest``'s layers from: for fuse, with the remote ones. Blocking.

    A layer missing from the store is remote only for a lazy backend with a
    daemon to read it; for any other, the store's source says NotFound.
    With ``command`` (what the container will run; empty: the image's Cmd)
    the mount records or replays the prefetch trace of the image and that
    command, run in ``working_dir`` (empty: the image's WorkingDir), as
    ``lazyfs.cache.remote.trace_key`` keys it; without, it does neither.
    """
    if backend not in LAZY_BACKENDS or daemon is None:
        return blobs
    for layer in manifest.layers:
        hold_stored(blobs.store, layer)
    origins = remote_origins(blobs.store, manifest)
    if not origins:
        return blobs
    trace = None
    executable: tuple[str, ...] = ()
    if command is not None:
        config = manifest.config
        argv = (*config.entrypoint, *(command or config.cmd))
        cwd = working_dir or config.working_dir
        trace = run_trace_key(manifest, command, working_dir)
        executable = executable_paths(argv, config.env, cwd)
    return LazyBlobs(blobs, Remote(daemon, origins, trace, executable))


def run_trace_key(manifest: ImageManifest, command: Sequence[str], working_dir: str) -> str | None:
    """The prefetch trace key of ``manifest`` run as ``command`` (empty: the image's) in
    ``working_dir`` (empty: the image's)."""
    config = manifest.config
    cwd = working_dir or config.working_dir
    return trace_key(manifest.digest, config.entrypoint, command or config.cmd, cwd)


@dataclass(frozen=True)
class ReplayAhead:
    """What a lazy fetch is told of the prefetch trace of an image run as ``command`` in
    ``working_dir`` (``lazyfs.images.docker_published.TraceHook``): its key, as ``blobs_for``
    keys it, and, called once the fetch has looked for the trace beside the image
    and listed its published indexes, the start of its replay."""

    store: Store
    daemon: DaemonSpec
    command: Sequence[str]
    working_dir: str

    @property
    def cache_dir(self) -> Path:
        """Where the daemon keeps the traces the mount records."""
        return self.daemon.cache_dir

    def key(self, manifest: ImageManifest) -> str | None:
        """The trace key of ``manifest`` run as ``command`` in ``working_dir``."""
        return run_trace_key(manifest, self.command, self.working_dir)

    def __call__(self, manifest: ImageManifest, layers: Sequence[Layer]) -> None:
        """Have the daemon begin the replay of the trace of ``manifest``'s key for
        ``layers`` that are not in the store, if the cache or the store keeps one.
        Blocking; a hint: anything that fails is logged at INFO (this process's warnings
        reach the user's terminal).

        Called by ``DockerProvider.fetch_lazy`` (``layers``: those read by
        range) while it fetches and decodes the published indexes: some 100 ms
        before the mount would send the trace. A daemon the command started
        ahead (``lazyfs.cli_early``) and still loading is waited for
        (``mount_ahead.replay_early``, for at most a few seconds). The start
        of the mount sends the trace again (``lazyfs.fs.mount_ahead``), with
        the windows of the layers' published indexes it needs, kept by then,
        and the daemon's replay queue skips the chunks it has in hand or in
        flight.
        """
        try:
            key = self.key(manifest)
            if key is None:
                return
            origins = remote_origins(self.store, manifest)
            from lazyfs.fs.mount_ahead import replay_early  # loaded by lazy mounts only

            replay_early(self.cache_dir, self.store.root, layers, origins, key)
        except Exception as error:  # a hint: the mount sends the trace all the same
            log.info("the trace of %s was not sent early: %s", manifest.reference, error)


def start_adopting(
    blobs: LocalBlobSource, manifest: ImageManifest, log_dir: Path, limits: LayerLimits | None
) -> None:
    """Once the mount of ``blobs`` is up: its remote layers copied into the store as they complete.

    Nothing for a mount with no remote layer, or when a process adopts the
    image already (its lock held: ``adopt_later``). The process is detached and outlives
    this one; one that cannot be started is logged: the layers stay
    remote, and the next start tries again. See ``lazyfs.provision.adopt``.
    """
    if not isinstance(blobs, LazyBlobs) or not blobs.remote.origins:
        return
    store = blobs.blobs.store
    bounds = None
    if limits is not None:
        bounds = (limits.max_size, limits.max_ratio)
    try:
        adopt_later(store.root, blobs.remote.daemon.cache_dir, manifest, log_dir, bounds)
    except OSError as error:
        log.warning("the remote layers of %s stay remote: %s", manifest.reference, error)


def remote_digests(blobs: LocalBlobSource) -> tuple[Digest, ...]:
    """The layers ``blobs`` leaves in a registry, for the provisioner's record."""
    if isinstance(blobs, LazyBlobs):
        return tuple(blobs.remote.origins)
    return ()
