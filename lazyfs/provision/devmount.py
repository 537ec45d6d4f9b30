"""``lazyfs mount`` and ``lazyfs umount``: an image at a directory, to look inside.

For a developer rather than a container: the image's layers are fetched into
the store (but for those the cache daemon reads from the registry, as for
the fuse backend: ``lazyfs.provision.lazy``) and served by a FUSE mount
process at a directory the user names.
What the mount needs besides the store lives under
``<work_dir>/mounts/<key>/`` (key: a hash of the mount point)::

    mountpoint   the mount point, absolute
    image.json   the image mounted (reference, platform, digest, layers), so
                 image GC keeps it (``lazyfs.provision.usage``)
    pid          the mount process
    mount.log    what the mount process logged
    upper/ work/ with --writable: where writes go; discarded on umount

``<work_dir>/mounts`` and each record are closed to other users (``0700``,
see ``providers.private_dir``): the upper holds copies of setuid files.

``umount`` takes the mount down, waits for its process and removes that
directory, so writes made through a writable mount are gone afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from backends.mounts import NOT_ANSWERING, mount_problem
from lazyfs.fs import mount as lazy_mount
from lazyfs.progress import Progress
from lazyfs.provision.devmount_list import answer_in_time, mount_point_state
from lazyfs.provision.lazy import start_adopting
from lazyfs.provision.lazy_progress import lazy_progress
from lazyfs.provision.provisioner import Provisioner
from lazyfs.provision.records import require_layers
from lazyfs.store.disk import locked_async
from providers.errors import Conflict, NotFound, UsageError
from providers.fslock import remove_lock, try_exclusive_lock
from providers.fstree import remove_tree
from providers.image_pb2 import Image
from providers.manifest import ImageManifest
from providers.mount_path import others_can_move
from providers.mountinfo import mount_point_set
from providers.private_dir import private_dir, write_private

T = TypeVar("T")

# Symlinks followed on the way to a mount point before it is taken as written (ELOOP's).
_MAX_HOPS = 40


@dataclass(frozen=True)
class DevMount:
    mountpoint: Path
    pid: int
    writable: bool
    record: Path
    image: ImageManifest


def record_dir(work_dir: Path, mountpoint: Path) -> Path:
    # Its bytes, as the kernel has them: a path that is not UTF-8 gets a key too (for
    # umount to say there is no such mount), and a UTF-8 one the key it always had.
    key = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:24]
    return work_dir / "mounts" / key


def _mount_lock(locks: Path, work_dir: Path, mountpoint: Path) -> Path:
    """The lock of the mount point ``mountpoint``, held by its mount and its unmount:
    two at once at one place would both pass their checks (':' is in no container id)."""
    return locks / f"mount:{record_dir(work_dir, mountpoint).name}.lock"


def _text(path: Path) -> str:
    """``path`` for a message, each byte that is not UTF-8 written ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_mountpoint(mountpoint: Path, *, suid: bool, dev: bool, writable: bool = False) -> Path:
    """``mountpoint`` made absolute, or the UsageError (Conflict) that refuses it.

    Called again by ``mount_image``; the CLI calls it first, so that a
    refused mount starts nothing (such as the cache daemon) before saying so.
    """
    if (suid or dev) and os.geteuid() != 0:
        # fusermount3 would mount nosuid,nodev anyway, and say so only in the log.
        raise UsageError("lazyfs mount --suid and --dev need root")
    if writable and os.geteuid() != 0:
        raise UsageError("lazyfs mount --writable needs root: its upper keeps the image's owners")
    # Where the kernel mounts, and the mount table and the record name it: symlinks followed.
    mountpoint = Path(os.path.realpath(mountpoint))
    if _text(mountpoint) != str(mountpoint):
        # The record (``mountpoint``, the mount process's JSON config) and what ``mount``
        # prints hold it as UTF-8 text.
        raise UsageError(
            f"mount point {_text(mountpoint)} is not UTF-8: lazyfs mounts at UTF-8 paths"
        )
    # The mount it is in, or is: one whose process died or is stuck is asked with statfs
    # (the kernel answers a stat from what it learnt before) before anything else asks it.
    points = set(lazy_mount.mount_points())  # read once: the path's every ancestor is asked
    holder = next((p for p in (mountpoint, *mountpoint.parents) if p in points), None)
    if holder is not None and mount_problem(holder) is not None:
        raise Conflict(f"{holder} is a mount whose process is gone or stuck: take it down"
                       f" with lazyfs umount {holder}")  # fmt: skip
    if holder == mountpoint:
        raise Conflict(f"{mountpoint} is already a mount point")
    if not mountpoint.is_dir():
        # Symlinks are followed above: a missing place is not there at all.
        what = "is not a directory" if mountpoint.exists() else "does not exist"
        raise UsageError(f"mount point {mountpoint} {what}")
    if os.geteuid() == 0:
        # Root mounts by path, seconds after this check (``providers.mount_path``).
        try:
            why = others_can_move(str(mountpoint))
        except OSError as error:
            why = f"cannot be checked: {error.strerror or error}"
        if why is not None:
            raise UsageError(
                f"refusing mount point {mountpoint}: {why} (as root, lazyfs mounts only"
                " where no other user can move the mount point)"
            )
    if any(mountpoint.iterdir()):
        raise UsageError(f"mount point {mountpoint} is not empty")
    return mountpoint


async def mount_image(
    provisioner: Provisioner,
    work_dir: Path,
    image: Image,
    mountpoint: Path,
    *,
    writable: bool,
    debug: bool = False,
    suid: bool = False,
    dev: bool = False,
    progress: Progress | None = None,
) -> DevMount:
    """Fetch ``image`` and mount it at ``mountpoint``, an existing empty directory.

    ``nosuid,nodev`` unless ``suid`` or ``dev`` (root only: UsageError
    otherwise) ask to honour the image's setuid bits or device nodes: the
    mount is for a person to look inside, and other users may reach it
    (``lazyfs.fs.mount_main.mount_options`` says why it is ``allow_other``).

    Blocking parts (starting the mount process, waiting while it indexes)
    run here, in the caller's thread: the CLI calls this once and exits. Nothing is left
    mounted or recorded when it fails.
    """
    mountpoint = check_mountpoint(mountpoint, suid=suid, dev=dev, writable=writable)
    # Two mounts at one mount point at once would both pass the check: the second waits
    # here (':' is in no container id), then finds the first mounted.
    lock = _mount_lock(provisioner.locks, work_dir, mountpoint)
    async with locked_async(lock):
        try:
            check_mountpoint(mountpoint, suid=suid, dev=dev)
            return await _mount_image(
                provisioner, work_dir, image, mountpoint,
                writable=writable, debug=debug, suid=suid, dev=dev, progress=progress,
            )  # fmt: skip
        finally:
            remove_lock(lock)  # mounted or not, the next waiter finds out for itself


async def _mount_image(
    provisioner: Provisioner,
    work_dir: Path,
    image: Image,
    mountpoint: Path,
    *,
    writable: bool,
    debug: bool,
    suid: bool,
    dev: bool,
    progress: Progress | None,
) -> DevMount:
    manifest = await provisioner.fetch(image, progress, lazy=True)
    require_layers(manifest)
    blobs = provisioner.blobs_for("fuse", manifest)
    record = record_dir(work_dir, mountpoint)
    if record.exists():  # left by a mount that is gone (checked above)
        remove_tree(record)
    private_dir(record.parent)
    private_dir(record, exist_ok=False)
    try:
        # Before the mount: GC must see what it uses from its first read on.
        image_json = {
            "reference": manifest.reference,
            "platform": manifest.platform,
            "digest": manifest.digest,
            "layers": [layer.digest for layer in manifest.layers],
        }
        # Private, whatever the umask (write_text: 0666 less it).
        write_private(record / "image.json", json.dumps(image_json).encode())
        write_private(record / "mountpoint", f"{mountpoint}\n".encode())
        with lazy_progress(blobs, manifest, progress):
            pid = lazy_mount.mount_recorded(
                record,
                manifest.layers,
                mountpoint,
                store=provisioner.store.root,
                writable=writable,
                debug=debug,
                suid=suid,
                dev=dev,
                limits=provisioner.limits,
                remote=blobs.remote if isinstance(blobs, lazy_mount.RemoteAware) else None,
            )
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(record)
        raise
    start_adopting(blobs, manifest, provisioner.root, provisioner.limits)
    return DevMount(mountpoint, pid, writable, record, manifest)


def unmount_image(work_dir: Path, mountpoint: Path) -> None:
    """Take down the lazyfs mount at ``mountpoint`` and forget it; NotFound if none.

    Nothing on the way to it is looked at without a deadline (``devmount_list``
    asks the same way): a mount point inside a mount whose process is stopped
    (another lazyfs mount, say) is taken down if the kernel can reach it
    without that process, else refused (Conflict) naming the stopped mount,
    its record kept, within seconds, never waited on for ever.
    """
    mountpoint = _recorded_as(work_dir, mountpoint)
    record = record_dir(work_dir, mountpoint)
    # Not "lazyfs has ...": the CLI puts "lazyfs: " before it.
    gone = NotFound(f"no lazyfs mount at {_text(mountpoint)} (with this --work_dir)")
    if not record.exists():
        raise gone  # only what lazyfs mounted, with this work dir: never someone else's mount
    lock = _mount_lock(work_dir.absolute() / "provisioner" / "locks", work_dir, mountpoint)
    # Not waited for: a mount holds it while it fetches, and an umount meant to end
    # one stuck there would wait in silence.
    with try_exclusive_lock(lock) as free:
        if not free:
            raise Conflict(
                f"a mount or umount at {_text(mountpoint)} is in progress: try again once"
                " it is done"
            )
        try:
            if not record.exists():
                raise gone  # another umount took it down meanwhile: this one did nothing
            points = mount_point_set()
            # As the record holds it, the mount table's own name: compared as text. The
            # unmount walks the path to it, asking each mount on the way.
            if mountpoint in points:
                _asked(lambda: lazy_mount.fusermount_unmount(mountpoint), [mountpoint],
                       points, f"cannot unmount {_text(mountpoint)}")  # fmt: skip
            lazy_mount.unmount(mountpoint, pid=lazy_mount.recorded_pid(record), named=True)
            # upper/ of a writable mount holds whatever was written, at any depth.
            with contextlib.suppress(OSError):
                remove_tree(record)
        finally:
            remove_lock(lock)


def _recorded_as(work_dir: Path, given: Path) -> Path:
    """``given`` as a record would hold it: absolute, symlinks followed (a mount point is
    none). Conflict if following them waits on a mount that does not answer."""
    absolute = Path(os.path.abspath(given))
    points = mount_point_set()
    if record_dir(work_dir, absolute).exists() or absolute in points:
        # As lazyfs recorded it, or as the kernel names a mount: nothing to follow, so
        # nothing on the way is looked at (a mount there may be stopped).
        return absolute
    at = [absolute]
    return _asked(lambda: _followed(work_dir, absolute, at), at, points,
                  f"cannot look up {_text(absolute)}")  # fmt: skip


def _followed(work_dir: Path, absolute: Path, at: list[Path]) -> Path:
    """``absolute`` with the symlinks on the way to it followed (``_walk``). Blocking, for
    ever when a mount on the way is stopped: asked through ``_asked``."""
    mountpoint = _walk(absolute.parent, at) / absolute.name  # the mount itself may be wedged
    if not record_dir(work_dir, mountpoint).exists():
        # Perhaps given as a link to where it is mounted. Only now looked at: an lstat of
        # the mount point itself asks a dead mount (ENOTCONN) or a stopped one (for ever).
        at.append(mountpoint)
        with contextlib.suppress(OSError):
            if mountpoint.is_symlink():
                mountpoint = _walk(mountpoint, at)
    return mountpoint


def _walk(path: Path, at: list[Path]) -> Path:
    """The absolute ``path`` through its symlinks, as ``os.path.realpath`` gives it, one
    name at a time, each put in ``at`` before it is looked at: a symlink may lead into
    another mount, and a look that gets no answer is about the last one (``_asked``)."""
    done, todo, hops = Path("/"), list(path.parts[1:]), 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            done = done.parent
            continue
        step = done / name
        at.append(step)
        try:
            target = os.readlink(step)
        except OSError:  # no symlink (EINVAL), or nothing there: taken as it is written
            done = step
            continue
        hops += 1
        if hops > _MAX_HOPS:  # a loop: the rest as it is written, as realpath leaves it
            return step.joinpath(*todo)
        if os.path.isabs(target):
            done = Path("/")
        todo[:0] = [n for n in target.split("/") if n not in ("", ".")]  # "//x" too
    return done


def _stopped_holder(path: Path, points: frozenset[Path]) -> Path | None:
    """The outermost mount at or above ``path`` that answers nothing (its process stopped
    or stuck): a look at ``path`` waits on it for ever, where otherwise it is only slow.
    Outermost: a mount inside a stopped one does not answer either, through no fault of
    its own."""
    for mount in reversed([p for p in (path, *path.parents) if p in points]):
        if mount_point_state(mount, points) == "not answering":
            return mount
    return None


def _asked(ask: Callable[[], T], at: list[Path], points: frozenset[Path], failing: str) -> T:
    """What ``ask()``, a look at the path last in ``at``, returns, waited for while the
    mounts it lies in answer; Conflict (``failing``: what could not be done) when one
    does not. The look is given up on, not ended: an unmount as a user other than root
    is fusermount3's, a child process, which is left waiting too, and takes the mount
    down once the stopped one is continued (the next umount forgets the record)."""
    stopped: list[Path] = []

    def hopeless() -> bool:
        stopped.extend(filter(None, [_stopped_holder(at[-1], points)]))
        return bool(stopped)

    answer = answer_in_time(ask, hopeless=hopeless)
    if answer is None:
        holder = _text(stopped[-1])
        raise Conflict(
            f"{failing}: the mount it lies in, {holder}, {NOT_ANSWERING}: continue that"
            f" process, or unmount {holder} first"
        )
    return answer[0]
