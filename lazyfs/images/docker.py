"""The Docker image provider: a reference in, verified blobs in the store out.

``fetch`` makes every layer blob present in the store. ``fetch_lazy`` does
the same but for the layers the fuse backend reads from a registry by range
through the cache daemon (``lazy_layer``: eStargz layers, which carry the
``containerd.io/snapshot/stargz/toc.digest`` annotation, and layers whose
index was published beside the image: ``lazyfs.publish.fetch``): those stay
in the registry, and only the other layers are pulled, in parallel as always.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlparse

import trio

from lazyfs.images.docker_published import (
    Listings,
    TraceHook,
    lazy_layer,
    load_lookup_code,
    published,
    without_index_blobs,
)
from lazyfs.images.docker_stored import NamedNow, remote_layers, still_named, stored_image
from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from lazyfs.store.pull_failures import attempt_of, pull_lock
from lazyfs.store.temps import Temps
from providers.docker_local import LocalPuller
from providers.errors import BackendError, BadImage, DigestMismatch, LazyfsError, NotFound
from providers.image_pb2 import Image
from providers.manifest import (
    ImageManifest,
    Layer,
)
from providers.platforms import host_platform, platform_matches
from providers.reference import parse_reference
from providers.registry_auth import parse_docker_config
from providers.registry_options import RegistryOptions
from providers.source import BlobSource, Puller
from providers.transports import PathPuller, parse_transport

if TYPE_CHECKING:
    # Loaded by a registry image only: the registry client loads requests.
    from providers.registry import RegistryClient

log = logging.getLogger(__name__)

# Blob copies and downloads in flight at once, across all images.
FETCH_LIMIT = trio.CapacityLimiter(4)


def _run_each(calls: list[Callable[[], None]]) -> None:
    """Each of ``calls`` (imports ahead of need), in turn; a failure is logged, and the
    import where the code is needed says what is wrong."""
    for call in calls:
        try:
            call()
        except Exception as error:
            log.debug("loading code ahead failed: %s", error)


def _registry_client(source: Puller) -> RegistryClient | None:
    """``source`` if it is a registry client; a local puller loads no registry code."""
    if isinstance(source, LocalPuller):  # PathPuller is one too
        return None
    from providers.registry import RegistryClient

    return source if isinstance(source, RegistryClient) else None


@dataclass
class DockerProvider:
    """Resolves ``Image.docker.name`` with the local puller or a registry.

    ``registry`` is what ``--docker_registry`` says: a directory (``/dir`` or
    ``file:///dir``) selects the local puller, an ``http(s)://`` URL the
    registry puller, as in Mesos. ``options`` carries the other registry
    flags; its ``registry`` is replaced by this URL. One registry client
    serves every image (its tokens are shared), except images whose
    ``Image.Docker.config`` brings their own credentials.
    """

    store: Store
    registry: str
    options: RegistryOptions = field(default_factory=RegistryOptions)
    # Called (in a thread) after a registry image is pulled whole; what it raises is a warning.
    after_pull: Callable[[ImageManifest], None] | None = None
    # --trust_published_indexes: look for indexes published beside an image and
    # mount from them. Off, no referrers are looked up and a kept image's index
    # blobs are ignored: such an index is trusted as far as push rights to the
    # repository, which pinning the image by digest does not narrow.
    trust_published: bool = False
    _client: RegistryClient | None = field(default=None, init=False, repr=False)

    def _source(self, image: Image) -> Puller:
        parsed = urlparse(self.registry)
        if parsed.scheme in ("", "file"):
            path = Path(parsed.path if parsed.scheme == "file" else self.registry)
            return LocalPuller(path, self.options.platform)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise BackendError(
                f"--docker_registry {self.registry}: expected a directory or an http(s) URL"
            )
        from providers.registry import RegistryClient

        options = dataclasses.replace(self.options, registry=self.registry.rstrip("/"))
        if image.docker.config:
            # The image's own credentials win over --docker_config for its hosts.
            own = parse_docker_config(image.docker.config, "Image.Docker.config")
            creds = {**options.http.credentials, **own}
            http = dataclasses.replace(options.http, credentials=creds)
            return RegistryClient(dataclasses.replace(options, http=http))
        if self._client is None:
            self._client = RegistryClient(options)
        return self._client

    async def fetch(self, image: Image, progress: Progress) -> ImageManifest:
        """Resolve ``image`` and make all its layer blobs present in the store.

        An image of no layers is refused (BadImage) before anything is stored;
        so is a single image that is not of the platform asked for (NotFound,
        ``_platform``).

        A stored image with a blob missing (``fetch_lazy`` left it remote) is
        resolved again, and what is missing is pulled; ``fetch_lazy`` takes it
        as stored when its mount reads the missing layers by range with what is
        here, and its reference still names it (``docker_stored``).

        With ``image.cached`` (the default) a reference the store already holds
        is not resolved again. Concurrent fetches of one reference, in this or
        another process, resolve it once; each blob is copied once; those that
        waited for one that failed fail at once with its error (``pull_lock``). When one
        layer fails, the others still finish, then its error is raised.
        Cancelled, it does not wait for downloads in flight: their threads
        are abandoned and end by themselves (see ``_ingest``), and their
        temporary files are removed before it returns. So are the ones a
        process that is gone left, before a pull begins.
        """
        return await self._fetch(image, progress, lazy=False)

    async def fetch_lazy(
        self,
        image: Image,
        progress: Progress,
        ahead: Callable[[], None] | None = None,
        traced: TraceHook | None = None,
    ) -> ImageManifest:
        """``fetch``, but the ``lazy_layer`` layers of a registry image stay in the registry.

        Those of an image from a directory are pulled as ever: no daemon reads them.
        ``ahead`` (the lazy mount's imports) runs in a thread while the registry is
        asked (after the lookup's imports there), when it is: not for an image the
        store holds, or one that is not read by range. ``traced`` runs in a thread of
        its own, not waited for, once the trace of its key was looked for beside the
        image and its published indexes listed, while they are still fetched and decoded:
        given the image and its layers read by range (eStargz, or with an index
        listed), it may begin a trace's replay (``lazyfs.provision.lazy.ReplayAhead``).
        It must not raise.
        """
        lazy = urlparse(self.registry).scheme in ("http", "https")
        return await self._fetch(image, progress, lazy=lazy, ahead=ahead, traced=traced)

    async def _found(
        self,
        image: Image,
        reference: str,
        platform: str,
        lazy: bool,
        traced: TraceHook | None,
        named: NamedNow,
    ) -> ImageManifest | None:
        """The stored image a start takes as it is (``docker_stored``): found with every
        blob here, or, ``lazy``, with each layer read by range mounting here and its
        reference still naming it (asked once per start: ``named``). With layers read
        by range, ``traced`` begins the replay of its trace, as after a resolve
        (``published``)."""
        stored = await trio.to_thread.run_sync(
            partial(stored_image, self.store, reference, platform, lazy=lazy,
                    trust_published=self.trust_published)
        )  # fmt: skip
        if stored is None:
            return None
        remote = await trio.to_thread.run_sync(remote_layers, self.store, stored)
        if not remote:
            return stored
        if not lazy:
            return None  # a blob removed since it was found (image GC): pulled again
        client = _registry_client(self._source(image))
        if client is None or not await still_named(client, stored, named):
            return None
        if traced is not None:
            with contextlib.suppress(RuntimeError):  # no thread to be had: the mount sends it
                threading.Thread(target=traced, args=(stored, remote),
                                 name="lazyfs-replay-ahead", daemon=True).start()  # fmt: skip
        return stored

    async def _fetch(
        self,
        image: Image,
        progress: Progress,
        *,
        lazy: bool,
        ahead: Callable[[], None] | None = None,
        traced: TraceHook | None = None,
    ) -> ImageManifest:
        if image.type != Image.DOCKER or not image.HasField("docker"):
            raise BadImage("not a Docker image")
        # oci:DIR, oci-archive:FILE, docker-archive:FILE: read again every time.
        local = parse_transport(image.docker.name)
        reference = str(local.absolute()) if local else str(parse_reference(image.docker.name))
        # Only a registry image is read by range, and only with the daemon's own
        # credentials: an image bringing its own (Image.Docker.config) is pulled whole.
        lazy = lazy and local is None and not image.docker.config
        # One reference names an image per platform; the store keeps each.
        platform = str(self.options.platform or host_platform())
        named = NamedNow()  # what the registry says the reference names: asked once
        if image.cached and local is None:
            stored = await self._found(image, reference, platform, lazy, traced, named)
            if stored is not None:
                return stored
        source = PathPuller(local, self.options.platform) if local else self._source(image)
        key = "image-" + hashlib.sha256(f"{reference}\n{platform}".encode()).hexdigest()
        # Held across the pull, so a second process waits and then finds everything
        # stored, or fails at once as the pull it waited for failed (``pull_lock``). Its
        # file goes as it is released: one per reference ever pulled (a new tag per
        # build, an archive's path) would stay otherwise. Only a failure of a pull made
        # the same way is passed on: one made otherwise may succeed (its own credentials).
        how = attempt_of(lazy=lazy, cached=image.cached, config=image.docker.config,
                         source=reference if local else self.registry)  # fmt: skip
        async with pull_lock(self.store.locks, key, self.store.tmp, reference, how) as attempt:
            if image.cached and local is None:
                stored = await self._found(image, reference, platform, lazy, traced, named)
                if stored is not None:
                    return stored
            # After that look: a pull waited for may have stored it before another failed.
            attempt.check_failed()
            # Temporary files of processes that are gone (a pull killed, or one whose disk
            # went read-only under it) would take the room this pull needs. A live one's stay.
            await trio.to_thread.run_sync(self.store.clean_tmp)
            loads = [load_lookup_code] if lazy and self.trust_published else []
            loads += [ahead] if lazy and ahead is not None else []
            if loads:
                # The lookup's code (some 20 ms of imports), and the lazy mount's, load while
                # the resolve waits on the registry, not after it. A thread of its own, not a
                # nursery's: the resolve's errors stay as they are, not grouped.
                with contextlib.suppress(RuntimeError):  # no thread to be had: they load then
                    threading.Thread(target=_run_each, args=(loads,), name="lazyfs-imports",
                                     daemon=True).start()  # fmt: skip
            client = _registry_client(source)
            resolve = partial(source.resolve, reference)
            listings = None
            if client is not None and lazy and self.trust_published:
                # The referrers listing goes out beside the config's request, not after it.
                listings = Listings(client, reference)
                resolve = partial(client.resolve, reference, seen=listings.seen)
            async with FETCH_LIMIT:
                manifest = await trio.to_thread.run_sync(resolve, abandon_on_cancel=True)
            manifest = ImageManifest(
                reference,
                manifest.digest,
                manifest.layers,
                manifest.config,
                self._platform(reference, manifest.platform),
            )
            if not manifest.layers:  # refused before anything is stored, as provision says it
                raise BadImage(f"image {reference} has no layers: no root filesystem to make")
            if client is not None:
                manifest = without_index_blobs(manifest)  # a registry's manifest never says it
                if listings is not None:
                    manifest = await published(
                        self.store, client, manifest, listings, traced=traced
                    )
            # A layer that fails does not cancel the others (their threads would be
            # abandoned mid-write): all finish, then the first failure stands for all.
            failures: list[LazyfsError] = []
            temps = Temps()
            try:
                async with trio.open_nursery() as nursery:
                    for layer in manifest.layers:
                        if lazy and lazy_layer(layer):
                            continue  # read by range through the cache daemon
                        progress.start(layer.digest, layer.size)
                        ingest = partial(self._ingest, source, layer, progress, reference)
                        nursery.start_soon(ingest, failures, temps)
            except BaseException:
                # Cancelled (Ctrl-C, SIGTERM), or a layer failed otherwise (a full disk):
                # threads still copying were abandoned, and the process may exit before
                # they clean up. Their files go now, and they stop at their next chunk.
                temps.abandon()
                raise
            if failures:
                raise failures[0]
            progress.finish()
            await trio.to_thread.run_sync(self.store.put_image, manifest)
            whole = not any(lazy and lazy_layer(layer) for layer in manifest.layers)
        if self.after_pull is not None and local is None and whole:
            await self._after_pull(self.after_pull, manifest)
        return manifest

    def _platform(self, reference: str, stated: str) -> str:
        """The platform an image is recorded under; ``stated``: the one its source says.

        Wanted is the platform asked for (``--platform``), else the host's, and
        an image is recorded as wanted: its next lookup asks for the same. A
        single image of another platform is refused when one was asked for, as
        docker and containerd refuse it; when none was, it is taken, as docker
        takes it (an arm64 image run under qemu), and recorded under the host's
        platform, which the store's lookups name.
        """
        wanted = self.options.platform or host_platform()
        if not stated or platform_matches(wanted, stated) or self.options.platform is None:
            return str(wanted)
        raise NotFound(f"{reference} is {stated}, not the {wanted} asked for")

    async def _after_pull(
        self, hook: Callable[[ImageManifest], None], image: ImageManifest
    ) -> None:
        """Run ``hook``; its failure is logged, the pull stands."""
        try:
            await trio.to_thread.run_sync(hook, image)
        except Exception as exc:
            # Publishing is a favour to other machines: nothing of it may fail the pull.
            known = isinstance(exc, (LazyfsError, OSError))
            log.warning(
                "%s: pulled, but publishing its indexes failed: %s",
                image.reference,
                exc,
                exc_info=not known,
            )

    async def _ingest(
        self,
        source: BlobSource,
        layer: Layer,
        progress: Progress,
        reference: str,
        failures: list[LazyfsError],
        temps: Temps,
    ) -> None:
        """Store one layer's blob; a LazyfsError goes to ``failures``, not up.

        Its temporary files are ``temps``'s, for ``_fetch`` to remove if it gives up.
        """

        def opener() -> BinaryIO:
            return source.open(layer.digest)

        def advance(n: int) -> None:
            progress.advance(layer.digest, n)

        async with FETCH_LIMIT:
            try:
                # Abandoned when cancelled (Ctrl-C, SIGTERM): a read that waits on the
                # network, or a retry's backoff, must not hold the cancellation up. Left
                # alone, the thread ends by itself, and all it can leave is a verified
                # blob: its tmp/ files are removed by _fetch (``Temps.abandon``).
                ingest = partial(self.store.ingest, layer, opener, advance, temps)
                await trio.to_thread.run_sync(ingest, abandon_on_cancel=True)
            except DigestMismatch as exc:
                # The store knows the blob, not the image: name it for the user.
                failures.append(exc.for_image(reference))
            except LazyfsError as exc:
                failures.append(exc)
