"""lazyfs driven as a library: one provisioner per image, its store pre-filled."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import trio

from backends.names import NAMES
from benchlib.images import BenchImage
from lazyfs.images.docker import DockerProvider
from lazyfs.progress import Progress
from lazyfs.provision.provisioner import Provisioner, ProvisionInfo
from lazyfs.store.disk import Store
from providers.image_pb2 import Image

_ids = itertools.count()


class Lazyfs:
    """A provisioner with its own work dir and store, and the image already fetched.

    Fetching is outside every timed region: the figures are about building
    rootfses from a store, which is what a second container from an image costs.
    """

    def __init__(
        self,
        work_dir: Path,
        image: BenchImage,
        reference: str | None = None,
        only: Sequence[str] | None = None,
    ) -> None:
        """``reference``: another form of ``image`` in its directory (its gzip one).

        ``only``: the backends to measure (``--backend``), else every one.
        """
        self.only = None if only is None else set(only)
        self.store = Store(work_dir / "store")
        provider = DockerProvider(self.store, str(image.image_dir))
        self.provisioner = Provisioner(work_dir, self.store, {"docker": provider}, "copy")
        self.image = Image(type=Image.DOCKER)
        self.image.docker.name = reference or image.reference
        self.manifest = trio.run(provider.fetch, self.image, Progress(enabled=False))
        self.layers = len(self.manifest.layers)

    def backends(self) -> list[str]:
        """Every backend lazyfs has that can take this image, read at runtime."""
        # bind unions nothing: it refuses images of more than one layer.
        return [
            name
            for name in NAMES
            if not (name == "bind" and self.layers > 1) and (self.only is None or name in self.only)
        ]

    def provision(self, backend: str, *, writable: bool) -> tuple[ProvisionInfo, float]:
        """Provision a new container; returns its info and the seconds ``provision`` took."""
        cid = f"bench-{backend}-{next(_ids)}"

        async def timed() -> tuple[ProvisionInfo, float]:
            start = trio.current_time()
            info = await self.provisioner.provision(cid, self.image, backend, writable=writable)
            return info, trio.current_time() - start

        return trio.run(timed)

    def destroy(self, container_id: str) -> None:
        trio.run(self.provisioner.destroy, container_id)

    @contextmanager
    def rootfs(self, backend: str, *, writable: bool = False) -> Iterator[ProvisionInfo]:
        """A provisioned rootfs for the block, destroyed after (also on Ctrl-C)."""
        info, _ = self.provision(backend, writable=writable)
        try:
            yield info
        finally:
            self.destroy(info.container_id)
