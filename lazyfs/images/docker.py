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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlparse

import trio

from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from providers.docker_local import LocalPuller
from providers.errors import BackendError, BadImage, DigestMismatch, LazyfsError
from providers.image_pb2 import Image
from providers.manifest import (
    INDEX_BLOB_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    Descriptor,
    ImageManifest,
    Layer,
)
from providers.platforms import host_platform
from providers.reference import parse_reference
from providers.registry_auth import parse_docker_config
from providers.registry_options import RegistryOptions
from providers.source import BlobSource, Puller
from providers.transports import PathPuller, parse_transport

if TYPE_CHECKING:
    # Loaded by a registry image only: the registry client loads requests.
    from providers.digest import Digest
    from providers.registry import RegistryClient

log = logging.getLogger(__name__)

# Blob copies and downloads in flight at once, across all images.
FETCH_LIMIT = trio.CapacityLimiter(4)


def lazy_layer(layer: Layer) -> bool:
    """Whether ``layer`` may stay in its registry, read by range.

    An eStargz layer, or one whose published index was found and kept
    (``lazyfs.publish.fetch``).
    """
    return (
        layer.annotation(TOC_DIGEST_ANNOTATION) is not None
        or layer.annotation(INDEX_BLOB_ANNOTATION) is not None
    )


def without_index_blobs(manifest: ImageManifest) -> ImageManifest:
    """``manifest`` with no layer naming an index blob: only ``lazyfs.publish.fetch`` names one."""
    if not any(layer.annotation(INDEX_BLOB_ANNOTATION) for layer in manifest.layers):
        return manifest
    layers = tuple(
        dataclasses.replace(
            layer, annotations=tuple(a for a in layer.annotations if a[0] != INDEX_BLOB_ANNOTATION)
        )
        for layer in manifest.layers
    )
    return dataclasses.replace(manifest, layers=layers)


def _load_lookup_code() -> None:
    """Import what ``DockerProvider._published`` imports, ahead of it. Blocking."""
    import lazyfs.publish.fetch
    import lazyfs.publish.listing
    import lazyfs.publish.traces  # noqa: F401


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

        A stored image with a blob missing (``fetch_lazy`` left it remote) is
        resolved again, and what is missing is pulled.

        With ``image.cached`` (the default) a reference the store already holds
        is not resolved again. Concurrent fetches of one reference, in this or
        another process, resolve it once; each blob is copied once. When one
        layer fails, the others still finish, then its error is raised.
        Cancelled, it does not wait for downloads in flight: their threads
        are abandoned and end by themselves (see ``_ingest``).
        """
        return await self._fetch(image, progress, lazy=False)

    async def fetch_lazy(
        self,
        image: Image,
        progress: Progress,
        ahead: Callable[[], None] | None = None,
        traced: Callable[[ImageManifest, Sequence[Layer]], None] | None = None,
    ) -> ImageManifest:
        """``fetch``, but the ``lazy_layer`` layers of a registry image stay in the registry.

        Those of an image from a directory are pulled as ever: no daemon reads them.
        ``ahead`` (the lazy mount's imports) runs in a thread while the registry is
        asked (after the lookup's imports there), when it is: not for an image the
        store holds, or one that is not read by range. ``traced`` runs in a thread of
        its own, not waited for, once the traces published beside the image are kept
        and its published indexes listed, while they are still fetched and decoded:
        given the image and its layers read by range (eStargz, or with an index
        listed), it may begin a trace's replay (``lazyfs.provision.lazy.replay_ahead``).
        It must not raise.
        """
        lazy = urlparse(self.registry).scheme in ("http", "https")
        return await self._fetch(image, progress, lazy=lazy, ahead=ahead, traced=traced)

    def _stored(self, reference: str, platform: str, lazy: bool) -> ImageManifest | None:
        """The stored image, if every blob it needs now is in the store. Blocking."""
        stored = self.store.get_image(reference, platform)
        if stored is None:
            return None
        if not self.trust_published:
            # Kept by an earlier provision that trusted them: not trusted now.
            stored = without_index_blobs(stored)
        for layer in stored.layers:
            if not (lazy and lazy_layer(layer)) and not self.store.has_blob(layer.digest):
                return None
        return stored

    async def _fetch(
        self,
        image: Image,
        progress: Progress,
        *,
        lazy: bool,
        ahead: Callable[[], None] | None = None,
        traced: Callable[[ImageManifest, Sequence[Layer]], None] | None = None,
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
        if image.cached and local is None:
            stored = await trio.to_thread.run_sync(self._stored, reference, platform, lazy)
            if stored is not None:
                return stored
        source = PathPuller(local, self.options.platform) if local else self._source(image)
        key = "image-" + hashlib.sha256(f"{reference}\n{platform}".encode()).hexdigest()
        # The lock is a blocking flock: take it in a thread, hold it across the
        # pull, so a second process waits and then finds everything stored.
        async with self.store.lock_async(key):
            if image.cached and local is None:
                stored = await trio.to_thread.run_sync(self._stored, reference, platform, lazy)
                if stored is not None:
                    return stored
            loads = [_load_lookup_code] if lazy and self.trust_published else []
            loads += [ahead] if lazy and ahead is not None else []
            if loads:
                # The lookup's code (some 20 ms of imports), and the lazy mount's, load while
                # the resolve waits on the registry, not after it. A thread of its own, not a
                # nursery's: the resolve's errors stay as they are, not grouped.
                with contextlib.suppress(RuntimeError):  # no thread to be had: they load then
                    threading.Thread(target=_run_each, args=(loads,), name="lazyfs-imports",
                                     daemon=True).start()  # fmt: skip
            async with FETCH_LIMIT:
                manifest = await trio.to_thread.run_sync(
                    source.resolve, reference, abandon_on_cancel=True
                )
            manifest = ImageManifest(
                reference, manifest.digest, manifest.layers, manifest.config, platform
            )
            client = _registry_client(source)
            if client is not None:
                manifest = await self._published(client, manifest, lazy=lazy, traced=traced)
            # A layer that fails does not cancel the others (their threads would be
            # abandoned mid-write): all finish, then the first failure stands for all.
            failures: list[LazyfsError] = []
            async with trio.open_nursery() as nursery:
                for layer in manifest.layers:
                    if lazy and lazy_layer(layer):
                        continue  # read by range through the cache daemon
                    progress.start(layer.digest, layer.size)
                    nursery.start_soon(self._ingest, source, layer, progress, reference, failures)
            if failures:
                raise failures[0]
            progress.finish()
            await trio.to_thread.run_sync(self.store.put_image, manifest)
            whole = not any(lazy and lazy_layer(layer) for layer in manifest.layers)
        if self.after_pull is not None and local is None and whole:
            await self._after_pull(self.after_pull, manifest)
        return manifest

    async def _published(
        self,
        client: RegistryClient,
        manifest: ImageManifest,
        *,
        lazy: bool,
        traced: Callable[[ImageManifest, Sequence[Layer]], None] | None = None,
    ) -> ImageManifest:
        """``manifest``, its layers with a published index so marked; ``traced``: ``fetch_lazy``."""
        manifest = without_index_blobs(manifest)  # a registry's manifest never says it
        if not (lazy and self.trust_published):
            return manifest  # not even a referrers request
        # Loaded for lazy pulls only: it loads the index code.
        from lazyfs.publish import fetch as index_lookup
        from lazyfs.publish.listing import list_image
        from lazyfs.publish.traces import fetch_traces

        # One referrers listing for both lookups below (lazyfs.publish.listing).
        listing = await trio.to_thread.run_sync(
            list_image, client, manifest, abandon_on_cancel=True
        )
        if listing is None:
            return manifest  # warned: pulled whole as without an index
        wanted = [
            layer
            for layer in manifest.layers
            if not lazy_layer(layer) and not self.store.has_blob(layer.digest)
        ]
        found: dict[Digest, Digest] = {}
        listed: dict[Digest, Descriptor] = {}  # the index blob listed for each layer
        aside: set[Digest] = set()  # layers whose listed one a mount here refused
        heard = trio.Event()  # ``listed`` is as full as it gets
        if not wanted:
            heard.set()

        async def look(what: str, lookup: Callable[[], object]) -> None:
            # Each says what the registry got wrong itself; anything else is a bug, and
            # only a hint's: logged whole, and the provision goes on without what it found.
            try:
                await trio.to_thread.run_sync(lookup, abandon_on_cancel=True)
            except Exception:
                log.warning("%s: looking for published %s failed", manifest.reference, what,
                            exc_info=True)  # fmt: skip

        def keep() -> None:
            found.update(index_lookup.published_layers(self.store, client, manifest, wanted,
                                                       listing, listed))  # fmt: skip

        def listed_here() -> None:
            listed.update(index_lookup.listed_indexes(listing, manifest))
            aside.update(index_lookup.set_aside(self.store, listed))

        async def indexes() -> None:
            try:
                await look("indexes", listed_here)
            finally:
                heard.set()
            if any(layer.digest in listed for layer in wanted):
                await look("indexes", keep)

        async def traces() -> None:
            await look("traces", partial(fetch_traces, self.store, client, manifest, listing))
            if traced is None:
                return
            await heard.wait()
            # Read by range: eStargz, or with an index listed and not set aside (one refused
            # after all is pulled whole, and what a replay fetched of it lost). Not waited for.
            remote = [layer for layer in manifest.layers if lazy_layer(layer)
                      or (layer.digest in listed and layer.digest not in aside)]  # fmt: skip
            if remote:
                with contextlib.suppress(RuntimeError):  # no thread to be had: the mount sends it
                    threading.Thread(target=traced, args=(manifest, remote),
                                     name="lazyfs-replay-ahead", daemon=True).start()  # fmt: skip

        # Learned prefetch traces too (a hint whose fetches are verified as any), fetched
        # beside the indexes: each is a few round trips; only ``traced`` waits on the listing.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(traces)
            if wanted:
                nursery.start_soon(indexes)
        return index_lookup.with_index_blobs(manifest, found) if found else manifest

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
    ) -> None:
        """Store one layer's blob; a LazyfsError goes to ``failures``, not up."""

        def opener() -> BinaryIO:
            return source.open(layer.digest)

        def advance(n: int) -> None:
            progress.advance(layer.digest, n)

        async with FETCH_LIMIT:
            try:
                # Abandoned when cancelled (Ctrl-C, SIGTERM): a read that waits on the
                # network, or a retry's backoff, must not hold the cancellation up. Left
                # alone, the thread ends by itself; all it can leave is a tmp/ file named
                # by this pid (Store.clean_tmp's) or a verified blob.
                await trio.to_thread.run_sync(
                    self.store.ingest, layer, opener, advance, abandon_on_cancel=True
                )
            except DigestMismatch as exc:
                # The store knows the blob, not the image: name it for the user.
                failures.append(exc.for_image(reference))
            except LazyfsError as exc:
                failures.append(exc)
