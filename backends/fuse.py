"""The fuse backend: lazyfs' own merged tree over the layer blobs, one mount process per rootfs.

Nothing is extracted, and no layer needs to be a local file here: the
rootfs is a FUSE mount served by a process of its own (``lazyfs.fs.mount``,
given the layers' descriptors and the store's root), detached from the
caller.  That process indexes each layer once into the store
(``layers/<hex>/index.json``, see ``lazyfs.index.model``) and keeps each
image's merged tree beside its top layer's index (``lazyfs.tree.kept``);
this module loads none of that code.  The ``blobs`` a backend is given are
not read here: the mount process reads the blobs in the store, and the
layers ``blobs`` says are still in a registry (``remote``, see
``lazyfs.cache.remote``) through the cache daemon, started when none runs.

Per rootfs, ``<rootfs>/../../scratch/<rootfs name>/`` (as the overlay
backend keeps its scratch) holds ``pid``, the mount process, and
``mount.log``, its log; for a writable rootfs also ``upper/``, its writes
in overlayfs' upperdir format, and ``work/``, copy-up temporaries (see
``lazyfs.fs.upper``).

A read-only rootfs is mounted ``ro``.  ``destroy`` unmounts
what a runtime mounted inside, then the rootfs, waits for the mount process
to end, and removes the mount point and the scratch directory; idempotent.
``remount`` starts a rootfs's mount process again when the old one died;
for a writable rootfs the new process takes over the ``upper/`` and
``work/`` the old one left, so the container's writes are still there
(``lazyfs.fs.upper_load``).  All of it blocking.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from backends.base import Rootfs, scratch_dir
from backends.mounts import mounts_under, unmount
from lazyfs.fs import mount as lazy_mount
from providers.errors import BackendError
from providers.fstree import remove_tree
from providers.layer_limits import LayerLimits
from providers.manifest import Layer
from providers.mountinfo import real_path
from providers.private_dir import private_dir
from providers.source import LocalBlobSource

FUSE_DEVICE = "/dev/fuse"


def check_fuse_device() -> None:
    """BackendError in one line when ``/dev/fuse`` cannot be opened, as a mount needs it.

    For the CLI to call before it resolves an image for this backend:
    libfuse says the same only after the pull, in its own words. Opening the
    device starts no FUSE session; the descriptor is closed at once.
    """
    try:
        fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        raise BackendError(
            f"{FUSE_DEVICE}: {error.strerror}: the fuse backend needs the fuse kernel "
            "module (modprobe fuse) and /dev/fuse readable and writable "
            "(in a container: --device /dev/fuse)"
        ) from None
    os.close(fd)


class FuseBackend:
    """Read-only or copy-on-write; needs /dev/fuse, fusermount3, and root for allow_other."""

    name = "fuse"

    def __init__(self, store: Path, limits: LayerLimits | None = None) -> None:
        # The store's root: the mount process reads the blobs and indexes there.
        self.store = store
        self.limits = limits

    def provision(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> Rootfs:
        if not layers:
            raise BackendError("the fuse backend needs an image of at least one layer")
        scratch = scratch_dir(rootfs)
        private_dir(scratch.parent)
        private_dir(scratch, exist_ok=False)
        try:
            rootfs.mkdir(mode=0o755)
            self._mount(scratch, layers, blobs, rootfs, writable=writable)
        except BaseException:
            with contextlib.suppress(OSError):
                rootfs.rmdir()
            with contextlib.suppress(OSError):
                remove_tree(scratch)
            raise
        return Rootfs(rootfs, self.name, writable=writable)

    def remount(
        self, layers: Sequence[Layer], blobs: LocalBlobSource, rootfs: Path, *, writable: bool
    ) -> None:
        """Start a mount process for ``rootfs`` again; a writable one keeps its writes.

        The new process of a writable rootfs loads the upper directory the
        old one left; BackendError when that upper is gone or damaged (what
        it holds stays there).
        """
        scratch = scratch_dir(rootfs)
        # The dead mount goes first; its process is gone, or goes now: the
        # upper must have one writer at a time.
        lazy_mount.unmount(rootfs, pid=lazy_mount.recorded_pid(scratch))
        if not writable:
            self._mount(scratch, layers, blobs, rootfs, writable=False)
            return
        upper, work = scratch / "upper", scratch / "work"
        for kept in (upper, work):
            if kept.is_symlink() or not kept.is_dir():
                raise BackendError(f"{kept}, where this rootfs's writes were kept, is gone")
        pid = lazy_mount.mount(
            layers,
            rootfs,
            store=self.store,
            log_path=scratch / "mount.log",
            upper=upper,
            work=work,
            limits=self.limits,
            remote=_remote(blobs),
        )
        lazy_mount.note_pid(scratch, rootfs, pid)  # as mount_recorded notes it

    def _mount(
        self,
        scratch: Path,
        layers: Sequence[Layer],
        blobs: LocalBlobSource,
        rootfs: Path,
        *,
        writable: bool,
    ) -> None:
        lazy_mount.mount_recorded(
            scratch,
            layers,
            rootfs,
            store=self.store,
            writable=writable,
            limits=self.limits,
            remote=_remote(blobs),
        )

    def destroy(self, rootfs: Path) -> None:
        scratch = scratch_dir(rootfs)
        # A runtime may have mounted inside (proc, dev): those go first.
        for point in mounts_under(rootfs):
            if point != real_path(rootfs):
                unmount(point)
        lazy_mount.unmount(rootfs, pid=lazy_mount.recorded_pid(scratch))
        with contextlib.suppress(FileNotFoundError):
            rootfs.rmdir()
        # A writable rootfs's upper holds whatever its container made, at any depth.
        remove_tree(scratch)


def _remote(blobs: LocalBlobSource) -> lazy_mount.Remote | None:
    """Where the layers still in a registry are read from, if ``blobs`` says."""
    return blobs.remote if isinstance(blobs, lazy_mount.RemoteAware) else None
