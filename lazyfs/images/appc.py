"""The Appc image provider: an ``Image.Appc`` in, plain layer blobs in the store out.

An image and its dependencies are found in the Appc store (by id, or by name
and labels) or fetched by simple discovery, each once.  Each ACI's
``rootfs/`` becomes one uncompressed layer tar (``providers.aci.write_layer``)
ingested into the shared blob store by its sha256, so every backend takes
Appc images as it takes Docker ones.

The image's own files win over its dependencies', and an earlier
dependency's over a later one's.  Visiting the image, then its dependencies
in order, depth first, and reversing gives the layers bottom first.

pathWhitelists are applied as the appc reference renderer
(``pkg/acirenderer``, ``getUpperPWLM``) applies them: an image is rendered
once for each way the dependency tree reaches it, and each time its files are
limited by its own whitelist and by the whitelist of its topmost ancestor on
that branch that has one (whitelists in between do not count).  So an image
that one dependency reaches under a whitelist and another reaches directly
shows whole, whatever the order of the dependencies.  One branch's rendering
is decided by the image and the whitelist it inherits, so each such pair is
rendered once, where it first shows: a lower copy would add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, cast

import trio

from lazyfs.index.stored import ensure_index
from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from lazyfs.tree.merge import merge
from providers.aci import write_layer
from providers.appc_manifest import AciManifest, check_image_id
from providers.appc_source import AppcDiscoverySource, AppcRef, AppcStoreSource, check_named
from providers.appc_store import AppcStore, shown
from providers.digest import Digest, HashingWriter
from providers.errors import BadEntry, BadImage, NotFound
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
# Layers one image may render to: an image reached under several whitelists
# is one layer for each.
MAX_LAYERS = MAX_IMAGES
# The whitelist an image inherits; None: no ancestor on its branch has one.
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
        # Top first: (image id, its own whitelist, the whitelist it inherits).
        order: list[tuple[str, tuple[str, ...], Whitelist]] = []
        rendered: set[tuple[str, Whitelist]] = set()
        seen: set[str] = set()
        names: dict[str, str] = {}  # image id: its manifest's name, for messages
        # Each stored manifest parsed once in this fetch, however many lookups.
        appc_store = self.appc_store.for_one_fetch()
        # One fetch per image however often the graph names it, even uncached.
        resolved: dict[AppcRef, tuple[str, AciManifest]] = {}

        def resolve(want: AppcRef) -> tuple[str, AciManifest]:
            if want not in resolved:
                resolved[want] = self._resolve(appc_store, want, cached=cached, progress=progress)
            return resolved[want]

        top_id, top = resolve(wanted)
        if wanted.image_id:  # recorded and listed under the name and labels written
            check_named(top, wanted, wanted.image_id)

        def visit(image_id: str, manifest: AciManifest, upper: Whitelist) -> None:
            # Met again under the same whitelist: rendered higher up already (or
            # a cycle, which renders nothing more).
            if (image_id, upper) in rendered:
                return
            rendered.add((image_id, upper))
            seen.add(image_id)
            names[image_id] = manifest.name
            if len(seen) > MAX_IMAGES:
                raise BadImage(f"appc image {wanted.describe()}: more than {MAX_IMAGES} images")
            if len(rendered) > MAX_LAYERS:
                raise BadImage(f"appc image {wanted.describe()}: more than {MAX_LAYERS} layers")
            order.append((image_id, manifest.path_whitelist, upper))
            # The topmost whitelist wins: this image's own only if none is above it.
            below = upper
            if below is None and manifest.path_whitelist:
                below = frozenset(manifest.path_whitelist)
            if len(manifest.dependencies) > MAX_DEPENDENCIES:
                raise BadImage(
                    f"appc image {manifest.name}: more than {MAX_DEPENDENCIES} dependencies"
                )
            # A later dependency's files win over an earlier one's (acbuild, the appc
            # reference renderer, Mesos): visited first, it is rendered higher.
            for dep in reversed(manifest.dependencies):
                dep_wanted = AppcRef(dep.name, tuple(dep.labels), dep.image_id)
                try:
                    dep_id, dep_manifest = resolve(dep_wanted)
                except NotFound as error:
                    raise NotFound(
                        f"dependency {dep_wanted.describe()} of appc image {manifest.name}: {error}"
                    ) from None
                visit(dep_id, dep_manifest, below)

        visit(top_id, top, None)
        layers = tuple(
            self._layer(image_id, own, upper) for image_id, own, upper in reversed(order)
        )
        names[top_id] = wanted.describe()  # as it was asked for
        # A layer's digest: the image it was made from (the same bytes: either).
        made_from: dict[Digest, str] = {}
        for layer, (image_id, _, _) in zip(layers, reversed(order), strict=True):
            made_from.setdefault(layer.digest, names[image_id])
        # As the command line names it, the id too when it was asked for: the id
        # alone is no image name, and name and labels alone may name another.
        reference = "appc:" + wanted.reference()
        prior = self.store.get_image(reference)
        if prior is None or [x.digest for x in prior.layers] != [x.digest for x in layers]:
            # Not for every start: these layers were checked when it was recorded.
            self._check_tree(layers, made_from, wanted.describe())
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

    def _check_tree(
        self, layers: tuple[Layer, ...], made_from: dict[Digest, str], top: str
    ) -> None:
        """Refuse the image now if its layers cannot be applied, naming the appc image.

        A backend would refuse it later (an entry through a symlink above
        root, say, maybe one a dependency made), naming a layer digest the
        user never sees elsewhere, after the image was recorded and listed
        as a usable one. The layers are indexed (stored: what the fuse
        backend reads) and merged, as every backend judges them.
        """
        indexes = []
        try:
            for layer in layers:
                blob = self.store.blob_path(layer.digest)
                indexes.append(
                    ensure_index(self.store.layers, self.store.tmp, layer.digest, blob,
                                 limits=self.store.limits)
                )  # fmt: skip
            merge(indexes)
        except BadEntry as error:
            name = made_from.get(Digest(error.layer), top)
            what = name if name == top else f"{name} (a dependency of {top})"
            raise type(error)(f"of appc image {what}", error.entry, error.reason) from None
        except BadImage as error:
            raise BadImage(f"appc image {top}: {error}") from None

    def _layer(self, image_id: str, own: tuple[str, ...], upper: Whitelist) -> Layer:
        """The layer blob of ``image_id`` under its ``own`` and inherited ``upper``
        whitelists, made and stored if missing."""
        whitelist = tuple(sorted(upper)) if upper is not None else ()
        with self.store.temp_file() as (tmp_path, out):
            hashing = HashingWriter(out)  # hashed as it is written, not read back
            with self.appc_store.aci_path(image_id).open("rb") as aci:
                write_layer(aci, cast(BinaryIO, hashing), whitelist, image_id, own=own)
            # No fsync: this file is only read back by ingest, which makes the durable copy.
            out.flush()
            layer = Layer(digest=hashing.digest(), media_type=OCI_LAYER_TAR, size=hashing.size)
            # Ingest checks the bytes again as they are copied in: cheap, and
            # the store's one way in.
            self.store.ingest(layer, lambda: tmp_path.open("rb"))
        return layer
