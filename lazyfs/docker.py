"""The Docker image provider: a reference in, verified blobs in the store out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import trio

from lazyfs.progress import Progress
from lazyfs.store import Store
from providers.docker_local import LocalPuller
from providers.errors import BackendError, BadImage
from providers.image_pb2 import Image
from providers.manifest import ImageManifest, Layer
from providers.reference import parse_reference
from providers.source import BlobSource

# Blob copies and downloads in flight at once, across all images.
FETCH_LIMIT = trio.CapacityLimiter(4)


@dataclass
class DockerProvider:
    """Resolves ``Image.docker.name`` with the local puller or (later) a registry.

    ``registry`` is what ``--docker_registry`` says: a directory (``/dir`` or
    ``file:///dir``) selects the local puller, as in Mesos.
    """

    store: Store
    registry: str

    def _source(self) -> LocalPuller:
        parsed = urlparse(self.registry)
        if parsed.scheme in ("", "file"):
            path = Path(parsed.path if parsed.scheme == "file" else self.registry)
            return LocalPuller(path)
        raise BackendError(
            f"--docker_registry {self.registry}: only local image directories are supported yet"
        )

    async def fetch(self, image: Image, progress: Progress) -> ImageManifest:
        """Resolve ``image`` and make all its layer blobs present in the store.

        With ``image.cached`` (the default) a reference the store already holds
        is not resolved again. Concurrent fetches of one reference, in this or
        another process, resolve it once; each blob is copied once.
        """
        if image.type != Image.DOCKER or not image.HasField("docker"):
            raise BadImage("not a Docker image")
        reference = str(parse_reference(image.docker.name))
        if image.cached:
            stored = await trio.to_thread.run_sync(self.store.get_image, reference)
            if stored is not None:
                return stored
        source = self._source()
        key = "image-" + hashlib.sha256(reference.encode()).hexdigest()
        # The lock is a blocking flock: take it in a thread, hold it across the
        # pull, so a second process waits and then finds everything stored.
        async with _thread_lock(self.store, key):
            if image.cached:
                stored = await trio.to_thread.run_sync(self.store.get_image, reference)
                if stored is not None:
                    return stored
            async with FETCH_LIMIT:
                manifest = await trio.to_thread.run_sync(source.resolve, reference)
            manifest = ImageManifest(reference, manifest.digest, manifest.layers, manifest.config)
            async with trio.open_nursery() as nursery:
                for layer in manifest.layers:
                    progress.start(layer.digest, layer.size)
                    nursery.start_soon(self._ingest, source, layer, progress)
            progress.finish()
            await trio.to_thread.run_sync(self.store.put_image, manifest)
        return manifest

    async def _ingest(self, source: BlobSource, layer: Layer, progress: Progress) -> None:
        def opener() -> BinaryIO:
            return source.open(layer.digest)

        def advance(n: int) -> None:
            progress.advance(layer.digest, n)

        async with FETCH_LIMIT:
            await trio.to_thread.run_sync(self.store.ingest, layer, opener, advance)


class _thread_lock:
    """An async context manager around Store.lock, entered in a worker thread."""

    def __init__(self, store: Store, name: str) -> None:
        self._cm = store.lock(name)

    async def __aenter__(self) -> None:
        # abandon_on_cancel stays False: the lock must not be taken by a thread
        # nobody waits for, or it would never be released.
        await trio.to_thread.run_sync(self._cm.__enter__)

    async def __aexit__(self, *exc: object) -> None:
        self._cm.__exit__(None, None, None)
