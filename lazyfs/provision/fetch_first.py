"""A container's images fetched before any of its rootfses is built.

A container needs its rootfs image and one image per volume
(``lazyfs.provision.volumes``). The provisioner fetches them all, the
rootfs's first and then each volume's in order, before its backend builds
anything: a volume whose image is missing or bad (unreachable, of no layer)
fails the provision at once, in one line naming the volume, rather than
after the rootfs was unpacked or mounted only to be undone. The builder
(``lazyfs.provision.build.RootfsBuilder``) is then handed what was fetched.

Fetched is what the provisioner's fetch makes present before a build: all
the layers for copy, bind and overlay; for a lazy backend
(``lazyfs.provision.lazy``) the manifest, the config and the layers no
daemon can read by range, which it pulls before mounting anyway, while the
others stay in their registry, read as the mount needs them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from lazyfs.provision.build import Workload
from lazyfs.provision.records import require_layers
from lazyfs.provision.volumes import VolumeSpec
from providers.errors import LazyfsError
from providers.image_pb2 import Image
from providers.manifest import ImageManifest

Fetch = Callable[[Image, Workload], Awaitable[ImageManifest]]


class FetchedFirst:
    """A ``RootfsBuilder``'s fetch that answers with what ``all`` fetched beforehand.

    ``fetch`` makes an image present, told what it is traced for
    (``Workload``). An image ``all`` did not fetch is fetched when it is
    asked for, as ``fetch`` would be.
    """

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._fetched: dict[bytes, ImageManifest] = {}

    async def all(self, image: Image, workload: Workload, volumes: Sequence[VolumeSpec]) -> None:
        """Fetch the rootfs's ``image`` (run as ``workload``), then each of ``volumes``'s in
        order, each required to have layers; an image met again is not fetched again.

        A volume's error starts with ``volume PATH``, as its build's would: it would read
        as the rootfs's otherwise.
        """
        await self._one(image, workload, None)
        for volume in volumes:
            await self._one(volume.image, (None, ""), f"volume {volume.container_path}")

    async def __call__(self, image: Image, workload: Workload) -> ImageManifest:
        found = self._fetched.get(_key(image))
        return found if found is not None else await self._fetch(image, workload)

    async def _one(self, image: Image, workload: Workload, named: str | None) -> None:
        key = _key(image)
        if key in self._fetched:
            return
        try:
            manifest = await self._fetch(image, workload)
            require_layers(manifest)
        except LazyfsError as error:
            if named is None:
                raise
            raise error.for_image(named) from None
        self._fetched[key] = manifest


def _key(image: Image) -> bytes:
    # A message is not hashable; its deterministic bytes name it, every field included.
    return image.SerializeToString(deterministic=True)
