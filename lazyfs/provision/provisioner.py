"""The provisioner: an image in, a rootfs per container out; destroy and recover.

Work is recorded under ``<work_dir>/provisioner`` as in Mesos::

    containers/<cid>/provisioning                      present while half done
    containers/<cid>/info.json                         complete once provisioning is gone
    containers/<cid>/backends/<backend>/rootfses/<id>  the rootfs, and one per image volume
    locks/<cid>.lock                                   held while one process works on <cid>
    locks/mount:<key>.lock                             held while ``lazyfs mount`` mounts

The work dir and everything lazyfs makes in it are closed to other users
(``0700``, see ``providers.private_dir``): a rootfs holds its image's setuid
files, and only its container may use them.

A container's image volumes (``lazyfs.provision.volumes``) are provisioned
by its backend beside its rootfs, as Mesos' ``volume/image`` isolator does,
and recorded in its ``info.json``: destroy, recover and image GC
(``lazyfs.provision.usage``) see them as part of the container.

A container directory without ``info.json`` is half-done work: ``recover``
removes it unless its provision is still running (it holds the lock).  A
caller that runs a container holds its lock for the container's life
(``hold``), so ``recover`` elsewhere reports it busy and leaves it alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import trio

from backends.base import Backend
from backends.names import default_backend_name, make_backend
from lazyfs.fs.mount import DaemonSpec, load_ahead_code
from lazyfs.progress import Progress
from lazyfs.provision import runtime
from lazyfs.provision.build import RecordAhead, RootfsBuilder, Workload
from lazyfs.provision.container_locks import ContainerLocks
from lazyfs.provision.fetch_first import FetchedFirst
from lazyfs.provision.lazy import (
    LAZY_BACKENDS,
    LazyProvider,
    ReplayAhead,
    blobs_for,
    start_adopting,
)
from lazyfs.provision.records import (
    ProvisionInfo,
    RecoverReport,
    VolumeInfo,
    check_container_id,
    incomplete,
    load_image,
    load_info,
    one_line,
    require_layers,
    write_info,
)
from lazyfs.provision.revive import Checked, check_kept, revive
from lazyfs.provision.teardown import destroy_pass, finish_recover, remove_container, remove_failed
from lazyfs.provision.usage import ContainerRecord, read_record
from lazyfs.provision.volumes import VolumeSpec, check_volumes
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store, in_use_async
from lazyfs.store.users import register as register_user
from providers.durable import sync_filesystem
from providers.errors import BadImage, Conflict, NotFound, UsageError
from providers.image_pb2 import Image
from providers.layer_limits import LayerLimits
from providers.manifest import ImageManifest
from providers.private_dir import private_dir, write_private
from providers.source import LocalBlobSource

# The records and checks live in lazyfs.provision.records; callers may take them from here.
__all__ = [
    "ImageProvider",
    "ProvisionInfo",
    "Provisioner",
    "RecoverReport",
    "check_container_id",
    "one_line",
    "require_layers",
]


class ImageProvider(Protocol):
    async def fetch(self, image: Image, progress: Progress) -> ImageManifest:
        """Resolve ``image`` and make all its layer blobs present in the store."""
        ...


class Provisioner:
    def __init__(
        self,
        work_dir: Path,
        store: Store,
        providers: Mapping[str, ImageProvider],
        default_backend: str | None = None,
        limits: LayerLimits | None = None,
        daemon: DaemonSpec | None = None,
    ) -> None:
        """``default_backend`` None: chosen as Mesos does (``default_backend_name``).

        ``limits`` bounds how far any layer unpacks, in every backend.
        ``daemon``: the cache daemon, through which the fuse backend reads
        the layers of registry images it mounts before pulling them
        (``lazyfs.provision.lazy``); None, every layer is pulled first.

        A relative ``work_dir`` is taken from the current directory, once:
        rootfs paths are recorded, mounted and handed to runtimes, which
        resolve them elsewhere.
        """
        self.root = work_dir.absolute() / "provisioner"
        self.containers = self.root / "containers"
        self.locks = self.root / "locks"
        self._locks = ContainerLocks(self.locks, self.containers)
        self.store = store
        # What backends read layers from: the provider's fetch made them all present.
        self.blobs = StoreBlobs(store)
        self.providers = providers
        self._default_backend = default_backend
        self.limits = limits
        self.daemon = daemon
        self._held: set[str] = set()  # container ids whose lock ``hold`` keeps
        for directory in (work_dir.absolute(), self.root, self.containers, self.locks):
            private_dir(directory)
        register_user(store.root, work_dir.absolute())  # GC from another work dir sees ours

    @property
    def default_backend(self) -> str:
        # Chosen on first use: the choice probes with a trial mount.
        if self._default_backend is None:
            self._default_backend = default_backend_name(self.store.tmp)
        return self._default_backend

    def backend(self, name: str) -> Backend:
        store = self.store
        return make_backend(
            name, store=store.root, layers_dir=store.layers, tmp_dir=store.tmp, limits=self.limits
        )

    async def provision(
        self,
        container_id: str,
        image: Image,
        backend: str | None = None,
        *,
        writable: bool = False,
        volumes: Sequence[VolumeSpec] = (),
        progress: Progress | None = None,
        publish: Callable[[ProvisionInfo], None] | None = None,
        command: Sequence[str] = (),
        working_dir: str = "",
    ) -> ProvisionInfo:
        """Build a rootfs for ``container_id`` from ``image``, and one per image volume.

        ``command``: what runs after the image's entrypoint (empty: its Cmd),
        in ``working_dir`` (empty: the image's), whose prefetch trace a lazy
        rootfs records or replays. Each of ``volumes`` is built by the same
        backend, writable if its mode is ``rw``, after the rootfs and in
        order, and recorded with it; its errors name it. Every image is
        fetched before any is built (``fetch_first``).
        Refuses (Conflict) a container id that exists, complete or not.
        ``publish``, if given, is called with the result before the
        container is marked complete: tell the caller's caller there, so a
        failure to (a closed pipe) undoes the container too.  Atomic for
        the caller: on any failure or cancellation nothing of the container
        is left; if the process dies first, an incomplete container is,
        which ``destroy`` and ``recover`` remove.
        """
        check_container_id(container_id)
        volumes = check_volumes(volumes)
        name = backend or self.default_backend
        chosen = self.backend(name)  # fails early on an unknown backend
        for wanted in (image, *(volume.image for volume in volumes)):
            self._provider(wanted)  # fails early on a provider not enabled
        progress = progress or Progress()
        home = self.containers / container_id
        async with self._locked(container_id):
            try:
                private_dir(home, exist_ok=False)
            except FileExistsError:
                if not self._complete(home):
                    # Its provision or destroy died (we hold the lock): say so, not "provisioned".
                    raise Conflict(incomplete(container_id, home)) from None
                raise Conflict(f"container {container_id} is already provisioned") from None
            try:
                write_private(home / "provisioning", f"{os.getpid()}\n".encode())
                lazy = name in LAZY_BACKENDS
                fetched = FetchedFirst(lambda wanted, workload: self._fetch(
                    self._provider(wanted), wanted, progress, lazy=lazy, workload=workload
                ))  # fmt: skip
                runs = (command, working_dir)
                await fetched.all(image, runs, volumes)  # a missing one fails before any build
                build = RootfsBuilder(home, name, chosen, progress, fetched,
                    lambda manifest, workload: self.blobs_for(name, manifest, *workload),
                    self._adopt,
                )  # fmt: skip
                what = f"the rootfs of {container_id}"
                # info.json is made durable while the backend builds, where it can be.
                ahead = None if volumes else RecordAhead(home, container_id, name, writable)
                manifest, rootfs, remote = await build(image, writable, what, runs, ahead)
                built = []
                for volume in volumes:
                    what = f"volume {volume.container_path} of {container_id}"
                    named = f"volume {volume.container_path}"
                    v_image, v_rootfs, v_remote = await build(volume.image, volume.writable,
                                                              what, named=named)  # fmt: skip
                    built.append(VolumeInfo(volume.container_path, volume.mode, v_rootfs.path,
                                            v_rootfs.writable, v_image, v_remote))  # fmt: skip
                info = ProvisionInfo(
                    container_id, rootfs.path, name, rootfs.writable, manifest, remote, tuple(built)
                )
                if ahead is None or ahead.written != info:  # volumes, or built otherwise
                    write_info(home, info)
                if publish is not None:
                    publish(info)
                (home / "provisioning").unlink()
                sync_filesystem(home)  # provisioned, with all it made, also after a power cut
                return info
            except BaseException as error:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(remove_failed, home, self.backend, error)
                raise

    async def destroy(self, container_id: str) -> bool:
        """Unmount and remove everything of ``container_id``; False if there was nothing."""
        check_container_id(container_id)
        home = self.containers / container_id
        if container_id not in self._held and (pid := self._locks.running(container_id)):
            raise Conflict(f"container {container_id} is being run (lazyfs run, pid {pid}): stop"
                           " it first, or with destroy --force; nothing was destroyed")  # fmt: skip
        async with self._locked(container_id):
            if not home.exists():
                return False
            await trio.to_thread.run_sync(self._remove, home)
        return True

    @contextlib.contextmanager
    def hold(self, container_id: str) -> Iterator[None]:
        """Hold ``container_id``'s lock for the block, waiting for it if need be.

        Meanwhile ``recover`` in any process reports the container busy and
        keeps it, and other processes' provision or destroy of it wait; this
        provisioner's own provision and destroy of it go ahead (under the
        lock held here).  For running a container: hold, provision, run,
        destroy. Blocking.
        """
        check_container_id(container_id)
        if container_id in self._held:
            raise UsageError(f"container {container_id} is already held")
        with self._locks.held(container_id):
            self._held.add(container_id)
            try:
                yield
            finally:
                self._held.discard(container_id)

    async def recover(self, keep: Sequence[str]) -> RecoverReport:
        """Keep the named containers, destroy the rest and all half-done work.

        A container whose provision is still running in another process, that
        a process holds (``hold``: it is running) or that runc still runs
        (``runtime.still_running``, whatever became of its ``lazyfs run``) is
        left alone and reported busy.  A kept container's rootfs is checked:
        a bind or fuse mount that is gone or dead is mounted again (a writable
        fuse one over its upper, with the container's writes); any other
        rootfs that does not work is reported broken, never kept, as is one
        whose image volume does.  Mounts are checked side by side first
        (``check_kept``), then acted on one by one; stale lock files go last.
        """
        kept, destroyed, busy, remounted, failed, broken = [], [], [], [], [], []
        wanted = set(keep)
        checked = await trio.to_thread.run_sync(check_kept, self.containers, wanted)
        runc = runtime.state_root(self.root.parent)  # where `lazyfs run` runs them
        with destroy_pass() as look:  # one look at the mount table for all destroyed
            for home in sorted(self.containers.iterdir()):
                cid = home.name
                with self._locks.tried(cid) as locked:
                    # Its lock is free once `lazyfs run` dies, yet runc may run it on.
                    if not locked or await trio.to_thread.run_sync(
                        runtime.still_running, runc, cid
                    ):
                        busy.append(cid)
                        continue
                    if cid in wanted and self._complete(home):
                        try:
                            if await trio.to_thread.run_sync(self._revive, cid, checked):
                                remounted.append(cid)
                        except Exception as error:
                            broken.append((cid, one_line(error)))
                            continue
                        kept.append(cid)
                        continue
                    try:
                        await trio.to_thread.run_sync(remove_container, home, self.backend, look)
                    except Exception as error:
                        # One container that cannot go must not keep the others.
                        failed.append((cid, one_line(error)))
                        continue
                    destroyed.append(cid)
        await trio.to_thread.run_sync(finish_recover, self._locks, self.store)
        return RecoverReport(
            tuple(kept),
            tuple(destroyed),
            tuple(busy),
            tuple(failed),
            tuple(remounted),
            tuple(broken),
        )

    async def fetch(
        self, image: Image, progress: Progress | None = None, *, lazy: bool = False
    ) -> ImageManifest:
        """Make ``image`` present in the store, with the provider its type names.

        ``lazy``: leave in the registry the layers a lazy backend reads by range.
        """
        return await self._fetch(self._provider(image), image, progress or Progress(), lazy=lazy)

    async def _fetch(self, provider: ImageProvider, image: Image, progress: Progress, *,
                     lazy: bool, workload: Workload = (None, "")) -> ImageManifest:  # fmt: skip
        if lazy and self.daemon is not None and isinstance(provider, LazyProvider):
            command, working_dir = workload
            replay = None  # a trace's replay begun as soon as the trace is kept
            if command is not None:
                replay = ReplayAhead(self.blobs.store, self.daemon, command, working_dir)
            # The lazy mount's own code loads while the registry is asked, not after it.
            return await provider.fetch_lazy(image, progress, load_ahead_code, replay)
        return await provider.fetch(image, progress)

    def blobs_for(self, backend: str, manifest: ImageManifest, command: Sequence[str] | None = None,
                  working_dir: str = "") -> LocalBlobSource:  # fmt: skip
        """What ``backend`` reads ``manifest``'s layers from (``lazy.blobs_for``). Blocking."""
        return blobs_for(backend, self.blobs, manifest, self.daemon, command, working_dir)

    def info(self, container_id: str) -> ProvisionInfo:
        """The record of ``container_id``, with its images; NotFound if none."""
        return load_info(self.store, self._record(container_id))

    def _record(self, container_id: str) -> ContainerRecord:
        check_container_id(container_id)
        home = self.containers / container_id
        try:
            record = read_record(home)
        except ValueError as error:
            raise NotFound(f"container {container_id}: {error}") from None
        if record is None:
            raise NotFound(incomplete(container_id, home) if home.is_dir() else
                           f"container {container_id} is not provisioned")  # fmt: skip
        return record

    def list(self) -> list[str]:
        return sorted(p.name for p in self.containers.iterdir())

    # -- internals ---------------------------------------------------------

    def _provider(self, image: Image) -> ImageProvider:
        kind = {Image.DOCKER: "docker", Image.APPC: "appc"}.get(image.type, "")
        provider = self.providers.get(kind)
        if provider is None:
            on = ", ".join(sorted(self.providers)) or "none"
            raise BadImage(f"no {kind or 'such'} image provider enabled (--image_providers: {on})")
        return provider

    def _revive(self, container_id: str, checked: Checked) -> bool:
        """``revive`` of a kept container (``checked``: ``check_kept``): True if it had to be
        mounted again; raises (BackendError, NotFound) why it does not work. Blocking."""
        record = self._record(container_id)
        kind = record.backend
        return revive(record, lambda image, named: load_image(self.store, image, named),
                      self.backend(kind), lambda image: self.blobs_for(kind, image),
                      self._adopt, checked)  # fmt: skip

    def _adopt(self, manifest: ImageManifest, blobs: LocalBlobSource) -> None:
        """Once ``blobs`` is mounted: its remote layers copied into the store as they complete."""
        start_adopting(blobs, manifest, self.root, self.limits)

    def _remove(self, home: Path) -> None:
        """Destroy every rootfs under ``home`` with its backend, then ``home``."""
        remove_container(home, self.backend)

    @contextlib.asynccontextmanager
    async def _locked(self, container_id: str) -> AsyncIterator[None]:
        """The container's lock, unless ``hold`` keeps it; the store's usage lock, shared."""
        async with in_use_async(self.store.root):  # GC waits till the record names its uses
            if container_id in self._held:
                yield
                return
            async with self._locks.taken(container_id):
                yield

    @staticmethod
    def _complete(home: Path) -> bool:
        """Whether the container at ``home`` finished provisioning."""
        return (home / "info.json").is_file() and not (home / "provisioning").exists()
