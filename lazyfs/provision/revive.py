"""Whether a kept container's rootfs and volumes still work, and mounting them again.

``recover --keep`` asks this of each container it keeps: a bind or fuse
mount that is gone (a reboot) or dead (its process killed) is mounted
again from the same layers; a rootfs that does not work and cannot be
mounted again is an error saying why, and the container is reported broken.
A container's image volumes are part of it: each is checked and revived
the same way, and one that cannot be makes the container broken.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backends.base import Backend, Remountable
from backends.mounts import NOT_ANSWERING, mount_problem
from lazyfs.provision.records import ProvisionInfo
from lazyfs.provision.usage import ContainerRecord
from providers.errors import BackendError, LazyfsError
from providers.manifest import ImageManifest
from providers.source import LocalBlobSource


def rootfs_problem(backend: str, rootfs: Path) -> str | None:
    """Why ``rootfs`` made by ``backend`` does not work (a short clause), or None."""
    if backend == "copy":  # a plain directory; every other backend mounts one
        return None if rootfs.is_dir() else "is missing"
    return mount_problem(rootfs)


def mount_state(backend: str, rootfs: Path) -> str:
    """``rootfs`` made by ``backend`` in a word, as ``lazyfs ps`` shows it.

    ``alive``, ``dead`` (in the mount table, its process gone), ``not
    answering`` (its process stopped or stuck), ``not mounted``; for the
    copy backend, which mounts nothing, ``directory`` or ``missing``.
    """
    problem = rootfs_problem(backend, rootfs)
    if problem is None:
        return "directory" if backend == "copy" else "alive"
    if backend == "copy":
        return "missing"
    if problem == NOT_ANSWERING:
        return "not answering"
    return "dead" if problem.startswith("is a dead mount") else "not mounted"


def revive(
    record: ContainerRecord,
    info: Callable[[], ProvisionInfo],
    backend: Backend,
    blobs_for: Callable[[ImageManifest], LocalBlobSource],
) -> bool:
    """Check ``record``'s rootfs and volumes; True if any had to be mounted again.

    Their images (``info``) are looked up only then: a record of an earlier
    lazyfs names them by reference alone, which may name another image by
    now, and a container that needs no image must not fail for that.
    Raises BackendError saying which does not work, and why, when it
    cannot be mounted again. Blocking.
    """
    parts = [("its rootfs", record.rootfs, record.writable)]
    parts += [(f"its volume {v.container_path} at", v.rootfs, v.writable) for v in record.volumes]
    gone = [(what, rootfs, writable, problem) for what, rootfs, writable in parts
            if (problem := rootfs_problem(record.backend, rootfs)) is not None]  # fmt: skip
    if not gone:
        return False
    found = info()
    images = {found.rootfs: found.image, **{v.rootfs: v.image for v in found.volumes}}
    for what, rootfs, writable, problem in gone:
        # Its process lives: mounted again, two would serve one upper if it went on.
        if problem == NOT_ANSWERING or not isinstance(backend, Remountable):
            raise BackendError(f"{what} {rootfs} {problem}")
        image = images[rootfs]
        try:
            backend.remount(image.layers, blobs_for(image), rootfs, writable=writable)
        except LazyfsError as error:
            raise BackendError(f"{what} {rootfs} {problem}: {error}") from error
        again = rootfs_problem(record.backend, rootfs)
        if again is not None:
            raise BackendError(f"{what} {rootfs} {again} after mounting it again")
    return True
