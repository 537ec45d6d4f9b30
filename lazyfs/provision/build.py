"""Building one image's rootfs under a container's directory, for its rootfs or a volume.

The provisioner builds a container's rootfs and each of its image volumes
the same way (as Mesos provisions an image volume with the rootfs's
backend): fetch the image, check it has layers, make a rootfs directory
``backends/<backend>/rootfses/<uuid>`` under the container, have the backend
build it there.  Nothing here undoes a failure: the provisioner removes the
whole container then.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import trio

from backends.base import Backend, Rootfs
from lazyfs.progress import Progress
from lazyfs.provision.lazy import remote_digests
from lazyfs.provision.lazy_progress import lazy_progress
from lazyfs.provision.records import ProvisionInfo, require_layers, write_info
from providers.digest import Digest
from providers.errors import LazyfsError
from providers.image_pb2 import Image
from providers.manifest import ImageManifest
from providers.private_dir import private_dir
from providers.source import LocalBlobSource

log = logging.getLogger(__name__)

# Runs beside a backend's build: given the manifest, the rootfs directory, the layers left remote.
Beside = Callable[[ImageManifest, Path, tuple[Digest, ...]], Awaitable[None]]
# What a rootfs's prefetch trace is of: the command after the image's entrypoint (None:
# not traced; empty: the image's Cmd), and the working directory (empty: the image's).
Workload = tuple[Sequence[str] | None, str]


class RootfsBuilder:
    """Builds rootfses under ``home`` with the backend called ``name``.

    ``fetch`` makes an image present (its layers in the store, or left in
    the registry for a lazy backend), told what it is traced for;
    ``blobs_for`` says what the backend reads an image's layers from, and
    for what command, in what working directory, it is traced (``Workload``;
    see ``lazyfs.provision.lazy.blobs_for``); ``after_build`` runs, in a
    thread, once a rootfs is built (its mount up):
    ``lazyfs.provision.lazy.start_adopting``.
    """

    def __init__(
        self,
        home: Path,
        name: str,
        backend: Backend,
        progress: Progress,
        fetch: Callable[[Image, Workload], Awaitable[ImageManifest]],
        blobs_for: Callable[[ImageManifest, Workload], LocalBlobSource],
        after_build: Callable[[ImageManifest, LocalBlobSource], None] | None = None,
    ) -> None:
        self.home = home
        self.name = name
        self.backend = backend
        self.progress = progress
        self.fetch = fetch
        self.blobs_for = blobs_for
        # Once a rootfs is built (its mount up): what follows it (``start_adopting``).
        self.after_build = after_build

    async def __call__(
        self,
        image: Image,
        writable: bool,
        what: str,
        workload: Workload = (None, ""),
        beside: Beside | None = None,
        *,
        named: str | None = None,
    ) -> tuple[ImageManifest, Rootfs, tuple[Digest, ...]]:
        """Fetch ``image``, build ``what`` from it: its manifest, rootfs and layers left remote.

        ``workload``: what its prefetch trace is of (``Workload``). ``beside``,
        if given, runs while the backend builds, once what the
        build will return is known but the rootfs itself: its manifest,
        its rootfs directory and its layers left remote. A failure of
        either fails the build. ``named``: what its errors start with (a
        volume's, which would read as the rootfs's otherwise).
        """
        try:
            return await self._build(image, writable, what, workload, beside)
        except LazyfsError as error:
            if named is None:
                raise
            raise error.for_image(named) from None

    async def _build(
        self, image: Image, writable: bool, what: str, workload: Workload, beside: Beside | None
    ) -> tuple[ImageManifest, Rootfs, tuple[Digest, ...]]:
        manifest = await self.fetch(image, workload)
        require_layers(manifest)
        rootfs_dir = self.home / "backends" / self.name / "rootfses" / str(uuid.uuid4())
        private_dir(rootfs_dir.parent)
        self.progress.message(f"building {what} with {self.name}")
        blobs = await trio.to_thread.run_sync(self.blobs_for, manifest, workload)
        remote = remote_digests(blobs)
        built: list[Rootfs] = []

        async def build() -> None:
            with lazy_progress(blobs, manifest, self.progress):
                built.append(
                    await trio.to_thread.run_sync(
                        lambda: self.backend.provision(
                            manifest.layers, blobs, rootfs_dir, writable=writable
                        )
                    )
                )

        if beside is None:
            await build()
        else:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(beside, manifest, rootfs_dir, remote)
                    await build()
            except BaseExceptionGroup as group:
                # As a build alone fails: with its error, not a group (the CLI
                # says a LazyfsError in one line). The other task, if it did
                # not fail too, was cancelled.
                raise _first(group) from None
        if self.after_build is not None:
            await trio.to_thread.run_sync(self.after_build, manifest, blobs)
        return manifest, built[0], remote


def _first(error: BaseException) -> BaseException:
    """The error to raise for ``error``, a group (of groups) of them or one.

    An interrupt wins, then the first that is not a cancellation (the task
    beside a failed build is cancelled); the others are logged, not lost:
    as a warning when they say something the chosen one does not, at debug
    level when they are the same failure (both out of space: the disk they
    share is full).
    """
    leaves = list(_leaves(error))
    chosen = next(
        (e for e in leaves if isinstance(e, KeyboardInterrupt)),
        next((e for e in leaves if not isinstance(e, trio.Cancelled)), leaves[0]),
    )
    for other in leaves:
        if other is not chosen and not isinstance(other, trio.Cancelled):
            level = logging.DEBUG if _same_failure(other, chosen) else logging.WARNING
            log.log(level, "provision: also failed beside the build: %s", other)
    return chosen


def _same_failure(one: BaseException, other: BaseException) -> bool:
    """Whether ``one`` and ``other`` are the same failure: the same errno behind both (a
    backend's error names the entry it was writing, and is raised from the OSError), else
    the same type and message."""
    errnos = _errno(one), _errno(other)
    if errnos != (None, None):
        return errnos[0] == errnos[1]
    return type(one) is type(other) and str(one) == str(other)


def _errno(error: BaseException | None) -> int | None:
    """The errno of ``error``, or of the OSError it was raised from, if any."""
    while error is not None:
        if isinstance(error, OSError):
            return error.errno
        error = error.__cause__
    return None


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for member in error.exceptions:
            yield from _leaves(member)
    else:
        yield error


class RecordAhead:
    """``beside`` a rootfs's build: its container's ``info.json``, written while the backend builds.

    A mount takes longer than the file's fsyncs, so they cost the
    provision nothing. The container is still incomplete meanwhile (its
    ``provisioning`` file stays until the provision is done), so a crash
    leaves it for ``recover`` to remove, as before. ``written`` is the
    record as written: the provisioner writes it again if the build came
    out otherwise, or when the container has volumes to record too.
    """

    def __init__(self, home: Path, container_id: str, backend: str, writable: bool) -> None:
        self.home = home
        self.container_id = container_id
        self.backend = backend
        self.writable = writable
        self.written: ProvisionInfo | None = None

    async def __call__(
        self, manifest: ImageManifest, rootfs_dir: Path, remote: tuple[Digest, ...]
    ) -> None:
        info = ProvisionInfo(
            self.container_id, rootfs_dir, self.backend, self.writable, manifest, remote
        )
        await trio.to_thread.run_sync(write_info, self.home, info)
        self.written = info
