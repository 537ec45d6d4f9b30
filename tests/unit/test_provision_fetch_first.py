"""The provisioner fetches every image of a container before its backend builds any rootfs
(``lazyfs.provision.fetch_first``), lazily where the backend reads layers lazily."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio

from backends.base import Rootfs
from lazyfs.cache.spawn import DaemonSpec
from lazyfs.images.docker_published import TraceHook
from lazyfs.progress import Progress
from lazyfs.provision.provisioner import Provisioner
from lazyfs.provision.volumes import VolumeSpec
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import BackendError, NotFound
from providers.image_pb2 import Image
from providers.manifest import OCI_LAYER_GZIP, ImageManifest, Layer
from providers.source import LocalBlobSource

LAYER = Layer(Digest("sha256:" + "ab" * 32), OCI_LAYER_GZIP, 10, None)


class Provider:
    """A lazy provider (``LazyProvider``) of one-layer images, but ``missing``: what each
    fetch was asked, and whether it was handed a trace's replay."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, bool]] = []

    async def fetch(self, image: Image, progress: Progress) -> ImageManifest:
        return self._answer("fetch", image, None)

    async def fetch_lazy(
        self,
        image: Image,
        progress: Progress,
        ahead: Callable[[], None] | None = None,
        traced: TraceHook | None = None,
    ) -> ImageManifest:
        return self._answer("fetch_lazy", image, traced)

    def _answer(self, how: str, image: Image, traced: TraceHook | None) -> ImageManifest:
        name = image.docker.name
        self.asked.append((how, name, traced is not None))
        if name == "missing":
            raise NotFound(f"image {name} not found")
        return ImageManifest(f"{name}:latest", Digest("sha256:" + "cd" * 32), (LAYER,))


class Backend:
    """Builds nothing: a build is the failure these tests look for."""

    name = "fuse"

    def provision(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> Rootfs:
        raise BackendError("built before every image was fetched")

    def destroy(self, rootfs: Path) -> None:
        pass


class Unbuilt(Provisioner):
    def backend(self, name: str) -> Backend:
        return Backend()


def image(name: str) -> Image:
    found = Image(type=Image.DOCKER)
    found.docker.name = name
    return found


@pytest.mark.parametrize("lazy", [True, False])
def test_a_missing_volume_image_fails_before_any_rootfs_is_built(
    tmp_path: Path, lazy: bool
) -> None:
    provider = Provider()
    daemon = DaemonSpec(tmp_path / "cache", ()) if lazy else None
    provisioner = Unbuilt(tmp_path / "work", Store(tmp_path / "store"), {"docker": provider},
                          "fuse", daemon=daemon)  # fmt: skip
    volumes = [VolumeSpec("/d", image("data")), VolumeSpec("/e", image("missing"))]

    async def provision() -> None:
        await provisioner.provision("c1", image("busybox"), volumes=volumes, command=["sh"])

    with pytest.raises(NotFound) as missing:
        trio.run(provision)
    assert str(missing.value) == "volume /e: image missing not found"
    # In order, each as the backend reads it: the rootfs's traced for its command.
    how = "fetch_lazy" if lazy else "fetch"
    assert provider.asked == [(how, "busybox", lazy), (how, "data", False), (how, "missing", False)]
    assert provisioner.list() == []
