"""Building one image's rootfs under a container's directory, for its rootfs or a volume.

The provisioner builds a container's rootfs and each of its image volumes
the same way (as Mesos provisions an image volume with the rootfs's
backend): fetch the image, check it has layers, make a rootfs directory
``backends/<backend>/rootfses/<uuid>`` under the container, have the backend
build it there.  Nothing here undoes a failure: the provisioner removes the
whole container then.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from backends.base import Backend, Rootfs
from lazyfs.progress import Progress
from lazyfs.provision.lazy import remote_digests
from lazyfs.provision.lazy_progress import lazy_progress
from lazyfs.provision.records import require_layers
from providers.digest import Digest
from providers.image_pb2 import Image
from providers.manifest import ImageManifest
from providers.private_dir import private_dir
from providers.source import LocalBlobSource


class RootfsBuilder:
    """Builds rootfses under ``home`` with the backend called ``name``.

    ``fetch`` makes an image present (its layers in the store, or left in
    the registry for a lazy backend); ``blobs_for`` says what the backend
    reads an image's layers from, and for what command it is traced
    (None: not traced; see ``lazyfs.provision.lazy.blobs_for``).
    """

    def __init__(
        self,
        home: Path,
        name: str,
        backend: Backend,
        progress: Progress,
        fetch: Callable[[Image], Awaitable[ImageManifest]],
        blobs_for: Callable[[ImageManifest, Sequence[str] | None], LocalBlobSource],
    ) -> None:
        self.home = home
        self.name = name
        self.backend = backend
        self.progress = progress
        self.fetch = fetch
        self.blobs_for = blobs_for

    async def __call__(
        self, image: Image, writable: bool, what: str, command: Sequence[str] | None = None
    ) -> tuple[ImageManifest, Rootfs, tuple[Digest, ...]]:
        """Fetch ``image``, build ``what`` from it: its manifest, rootfs and layers left remote."""
        manifest = await self.fetch(image)
        require_layers(manifest)
        rootfs_dir = self.home / "backends" / self.name / "rootfses" / str(uuid.uuid4())
        private_dir(rootfs_dir.parent)
        self.progress.message(f"building {what} with {self.name}")
        blobs = await trio.to_thread.run_sync(self.blobs_for, manifest, command)
        with lazy_progress(blobs, manifest, self.progress):
            rootfs = await trio.to_thread.run_sync(
                lambda: self.backend.provision(
                    manifest.layers, blobs, rootfs_dir, writable=writable
                )
            )
        return manifest, rootfs, remote_digests(blobs)
