"""The Appc image provider: an ``Image.Appc`` in, plain layer blobs in the store out.

An image and its dependencies are found in the Appc store (by id, or by name
and labels) or fetched by simple discovery, each once.  Each ACI's
``rootfs/`` becomes one uncompressed layer tar (``providers.aci.write_layer``)
ingested into the shared blob store by its sha256, so every backend takes
Appc images as it takes Docker ones.

Layer order follows the spec's rendering: the image's own files win over its
dependencies', and an earlier dependency's over a later one's.  Visiting the
image, then its dependencies in order, depth first, and reversing gives the
layers bottom first.  A pathWhitelist limits the files of its image and of
everything below it: the layer of each image keeps only paths allowed by
every whitelist on the way down to it (parents of allowed paths stay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, cast

import trio

from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from providers.aci import write_layer
from providers.appc_manifest import AciManifest, check_image_id
from providers.appc_source import AppcDiscoverySource, AppcRef, AppcStoreSource
from providers.appc_store import AppcStore, shown
from providers.digest import Digest, HashingWriter
from providers.errors import BadImage, NotFound
from providers.image_pb2 import Image
from providers.manifest import OCI_LAYER_TAR, ImageManifest, Layer
from providers.source import ImageSource

FETCH_LIMIT = trio.CapacityLimiter(2)
# Dependency graphs come from the images themselves: bound them.
MAX_IMAGES = 128
# Dependencies one manifest may name.  Real images name a few (a base and a
# handful of libraries); one naming more than a whole graph may hold is no
# real image's, and each costs a lookup in the store.
MAX_DEPENDENCIES = MAX_IMAGES
# None: no whitelist on the way down, everything shows.
Whitelist = frozenset[str] | None


@dataclass
class AppcProvider:
    """Resolves ``Image.appc`` from ``appc_store``, discovering what it lacks.

    ``discovery_prefix`` is ``--appc_simple_discovery_uri_prefix``: an
    http(s) URL prefix or a directory; empty means the store only.
    """

    store: Store
    appc_store: AppcStore
    discovery_prefix: str = ""

    async def fetch(self, image: Image, progress: Progress) -> ImageManifest:
        """Resolve ``image`` and its dependencies; their layers end in the store.

        With ``image.cached`` false every image in the chain is fetched again.
        Raises NotFound, BadImage (UnsafeLayer) or DigestMismatch for an image
        whose id is not the one asked for.
        """
        if image.type != Image.APPC or not image.HasField("appc"):
            raise BadImage("not an Appc image")
        labels = tuple((label.key, label.value) for label in image.appc.labels.labels)
        image_id = check_image_id(image.appc.id, "Image.Appc.id") if image.appc.id else ""
        wanted = AppcRef(image.appc.name, labels, image_id)
        async with FETCH_LIMIT:
            manifest = await trio.to_thread.run_sync(
                lambda: self._fetch_blocking(wanted, cached=image.cached, progress=progress)
            )
        progress.finish()
        await trio.to_thread.run_sync(self.store.put_image, manifest)
        return manifest

    # -- blocking ------------------------------------------------------------

    def _fetch_blocking(
        self, wanted: AppcRef, *, cached: bool, progress: Progress
    ) -> ImageManifest:
        order: list[tuple[str, Whitelist]] = []
        seen: set[str] = set()
        # Each stored manifest parsed once in this fetch, however many lookups.
        appc_store = self.appc_store.for_one_fetch()
        # One fetch per image however often the graph names it, even uncached.
        resolved: dict[AppcRef, tuple[str, AciManifest]] = {}

        def resolve(want: AppcRef) -> tuple[str, AciManifest]:
            if want not in resolved:
                resolved[want] = self._resolve(appc_store, want, cached=cached, progress=progress)
            return resolved[want]

        top_id, top = resolve(wanted)

        def visit(image_id: str, manifest: AciManifest, allowed: Whitelist) -> None:
            seen.add(image_id)
            if len(seen) > MAX_IMAGES:
                raise BadImage(f"appc image {wanted.describe()}: more than {MAX_IMAGES} images")
            if manifest.path_whitelist:
                own = frozenset(manifest.path_whitelist)
                allowed = own if allowed is None else allowed & own
            order.append((image_id, allowed))
            if len(manifest.dependencies) > MAX_DEPENDENCIES:
                raise BadImage(
                    f"appc image {manifest.name}: more than {MAX_DEPENDENCIES} dependencies"
                )
            for dep in manifest.dependencies:
                dep_wanted = AppcRef(dep.name, tuple(dep.labels), dep.image_id)
                try:
                    dep_id, dep_manifest = resolve(dep_wanted)
                except NotFound as error:
                    raise NotFound(
                        f"dependency {dep_wanted.describe()} of appc image {manifest.name}: {error}"
                    ) from None
                if dep_id not in seen:
                    visit(dep_id, dep_manifest, allowed)

        visit(top_id, top, None)
        layers = tuple(self._layer(image_id, allowed) for image_id, allowed in reversed(order))
        reference = "appc:" + wanted.describe()
        return ImageManifest(
            reference=reference,
            digest=Digest("sha512:" + top_id.removeprefix("sha512-")),
            layers=layers,
            config=top.config,
        )

    def _resolve(
        self, appc_store: AppcStore, wanted: AppcRef, *, cached: bool, progress: Progress
    ) -> tuple[str, AciManifest]:
        reference = wanted.reference()
        if cached:
            try:
                return self._stored(appc_store, AppcStoreSource(appc_store), reference)
            except NotFound:
                pass
        if not self.discovery_prefix:
            raise NotFound(
                f"appc image {wanted.describe()} is not in the store "
                "and no --appc_simple_discovery_uri_prefix is set"
            )
        discovery = AppcDiscoverySource(appc_store, self.discovery_prefix)
        progress.message(f"fetching {shown(discovery.location(reference))}")
        return self._stored(appc_store, discovery, reference)

    def _stored(
        self, appc_store: AppcStore, source: ImageSource, reference: str
    ) -> tuple[str, AciManifest]:
        """Resolve ``reference`` with ``source``; the id and manifest it left in ``appc_store``."""
        image = source.resolve(reference)
        image_id = "sha512-" + image.digest.removeprefix("sha512:")
        manifest = appc_store.manifest(image_id)
        if manifest is None:
            raise NotFound(f"appc image {reference}: {image_id} is not in the store")
        return image_id, manifest

    def _layer(self, image_id: str, allowed: Whitelist) -> Layer:
        """The layer blob of ``image_id`` under ``allowed``, made and stored if missing."""
        whitelist = tuple(sorted(allowed)) if allowed is not None else ()
        if allowed is not None and not allowed:
            # Whitelists that share nothing: nothing of this image shows.
            whitelist = ("/",)
        with self.store.temp_file() as (tmp_path, out):
            hashing = HashingWriter(out)  # hashed as it is written, not read back
            with self.appc_store.aci_path(image_id).open("rb") as aci:
                write_layer(aci, cast(BinaryIO, hashing), whitelist, image_id)
            # No fsync: this file is only read back by ingest, which makes the durable copy.
            out.flush()
            layer = Layer(digest=hashing.digest(), media_type=OCI_LAYER_TAR, size=hashing.size)
            # Ingest checks the bytes again as they are copied in: cheap, and
            # the store's one way in.
            self.store.ingest(layer, lambda: tmp_path.open("rb"))
        return layer
