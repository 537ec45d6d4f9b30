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

The kept containers are checked side by side first (``check_kept``), with
the mount table read once: a stopped mount costs its seconds once, not once
per such container, and a thousand mounts one read of the table, not a
thousand. What that check says is acted on (a mount made again) only once
it is asked again, under the container's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backends.base import Backend, Remountable
from backends.mounts import NOT_ANSWERING, mount_point_set, mount_problem
from lazyfs.provision.usage import ContainerRecord, ImageRecord, read_record
from providers.errors import BackendError, LazyfsError
from providers.manifest import ImageManifest
from providers.source import LocalBlobSource

# Mounts asked side by side: each may cost ANSWER_DEADLINE when its process is stopped.
AT_ONCE = 32
# What ``check_kept`` found: each rootfs's problem, or None for one that works.
Checked = Mapping[Path, str | None]


def rootfs_problem(
    backend: str, rootfs: Path, points: Collection[Path] | None = None
) -> str | None:
    """Why ``rootfs`` made by ``backend`` does not work (a short clause), or None.

    ``points``: the mount table read once for many (``mount_point_set``); None,
    read now.
    """
    if backend == "copy":  # a plain directory; every other backend mounts one
        return None if rootfs.is_dir() else "is missing"
    return mount_problem(rootfs, points)


def mount_state(backend: str, rootfs: Path, points: Collection[Path] | None = None) -> str:
    """``rootfs`` made by ``backend`` in a word, as ``lazyfs ps`` shows it.

    ``alive``, ``dead`` (in the mount table, its process gone), ``not
    answering`` (its process stopped or stuck), ``not mounted``; for the
    copy backend, which mounts nothing, ``directory`` or ``missing``.
    ``points`` as for ``rootfs_problem``.
    """
    problem = rootfs_problem(backend, rootfs, points)
    if problem is None:
        return "directory" if backend == "copy" else "alive"
    if backend == "copy":
        return "missing"
    if problem == NOT_ANSWERING:
        return "not answering"
    return "dead" if problem.startswith("is a dead mount") else "not mounted"


def check_kept(containers: Path, keep: Iterable[str]) -> Checked:
    """The problem of every rootfs and volume of the complete containers of ``keep``.

    Asked side by side (``AT_ONCE``), with the mount table read once.
    Without the containers' locks: asking changes nothing, and ``revive``
    asks again, under the lock, before it mounts anything. A container
    that is incomplete, being destroyed or unreadable is left out:
    ``recover`` finds that out itself. Blocking.
    """
    wanted = set(keep)
    parts: list[tuple[str, Path]] = []
    for home in sorted(home for home in containers.iterdir() if home.name in wanted):
        try:
            record = read_record(home)
        except (OSError, ValueError):  # unreadable, being destroyed: recover says so
            continue
        if record is not None:
            parts += [(record.backend, record.rootfs),
                      *((record.backend, v.rootfs) for v in record.volumes)]  # fmt: skip
    if not parts:
        return {}
    # After the records: a rootfs is mounted before its record says it is complete.
    points = mount_point_set()

    def ask(part: tuple[str, Path]) -> tuple[Path, str | None] | None:
        try:
            return part[1], rootfs_problem(part[0], part[1], points)
        except Exception:  # left out: ``revive`` asks again, and says why in its verdict
            return None

    with ThreadPoolExecutor(min(AT_ONCE, len(parts))) as pool:
        return dict(found for found in pool.map(ask, parts) if found is not None)


def _problem(backend: str, rootfs: Path, checked: Checked) -> str | None:
    """Why ``rootfs`` does not work, from ``checked`` where that cannot lead to harm.

    One found working is kept as it is, one that did not answer is broken
    (its process lives: asked again, it would cost its seconds again). One
    gone or dead is about to be mounted again: asked again first, with the
    mount table read now, since the check's snapshot may be older than a
    mount made or taken down since (mounting over a live one would put two
    processes on one upper).
    """
    if rootfs in checked:
        problem = checked[rootfs]
        if problem is None or problem == NOT_ANSWERING:
            return problem
    return rootfs_problem(backend, rootfs)


def revive(
    record: ContainerRecord,
    image_of: Callable[[ImageRecord, str], ImageManifest],
    backend: Backend,
    blobs_for: Callable[[ImageManifest], LocalBlobSource],
    adopt: Callable[[ImageManifest, LocalBlobSource], None],
    checked: Checked | None = None,
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
    cannot be mounted again. ``checked``: what ``check_kept`` found of its
    parts (``_problem``); a part it does not name is asked now. Blocking.
    """
    cid = record.container_id
    parts = [("its rootfs", record.rootfs, record.writable, record.image, "")]
    parts += [(f"its volume {v.container_path} at", v.rootfs, v.writable, v.image,
               f"'s volume {v.container_path}") for v in record.volumes]  # fmt: skip
    revived = False
    for what, rootfs, writable, recorded, whose in parts:
        problem = _problem(record.backend, rootfs, checked or {})
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
