"""Whether a kept container's rootfs and volumes still work, and mounting them again.

``recover --keep`` asks this of each container it keeps: a bind, overlay or
fuse mount that is gone (a reboot) or dead (its process killed) is mounted
again from the same layers (a writable overlay or fuse one over the writes
its container made); a rootfs that does not work and cannot be mounted
again is an error saying why, and the container is reported broken.  A
container whose destroy began is never asked about: ``recover`` finishes
its destroy (``lazyfs.provision.teardown``).
A container's image volumes are part of it: each is checked and revived
the same way, and one that cannot be makes the container broken.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backends.base import Backend, Remountable
from backends.mounts import NOT_ANSWERING, mount_problem
from lazyfs.provision.usage import ContainerRecord, ImageRecord
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
    image_of: Callable[[ImageRecord, str], ImageManifest],
    backend: Backend,
    blobs_for: Callable[[ImageManifest], LocalBlobSource],
    adopt: Callable[[ImageManifest, LocalBlobSource], None],
) -> bool:
    """Check ``record``'s rootfs and volumes; True if any had to be mounted again.

    The image of each is looked up (``image_of``: the image as recorded, and
    what to call it) only when it is mounted again: a record of an earlier
    lazyfs names it by reference alone, which may name another image by now,
    and a part that needs no image must not fail for that. A lazy part mounted
    again is handed to ``adopt`` once it works: the process that copied its
    remote layers into the store as they completed is gone with the mount (a
    reboot), and without another they would stay in the size-bounded cache.
    Raises BackendError saying which does not work, and why, when it
    cannot be mounted again. Blocking.
    """
    cid = record.container_id
    parts = [("its rootfs", record.rootfs, record.writable, record.image, "")]
    parts += [(f"its volume {v.container_path} at", v.rootfs, v.writable, v.image,
               f"'s volume {v.container_path}") for v in record.volumes]  # fmt: skip
    revived = False
    for what, rootfs, writable, recorded, whose in parts:
        problem = rootfs_problem(record.backend, rootfs)
        if problem is None:
            continue
        # Its process lives: mounted again, two would serve one upper if it went on.
        if problem == NOT_ANSWERING or not isinstance(backend, Remountable):
            raise BackendError(f"{what} {rootfs} {problem}")
        image = image_of(recorded, f"image {recorded.reference} of container {cid}{whose}")
        try:
            blobs = blobs_for(image)
            backend.remount(image.layers, blobs, rootfs, writable=writable)
        except LazyfsError as error:
            raise BackendError(f"{what} {rootfs} {problem}: {error}") from error
        again = rootfs_problem(record.backend, rootfs)
        if again is not None:
            raise BackendError(f"{what} {rootfs} {again} after mounting it again")
        adopt(image, blobs)
        revived = True
    return revived
