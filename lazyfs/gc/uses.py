"""What image GC must keep: what containers, mounts and the config use.

- Every provisioned container's images, its rootfs's and its image
  volumes', by reference and by layer, read from the containers' records
  under the work dir, and under every other work dir that uses the store
  (``lazyfs.store.users``).  A container whose
  provision died before its record was written builds on nothing any
  more (``recover`` removes it), so it keeps nothing; one whose provision
  is under way cannot be seen here, which is why GC and provisions take
  the store's usage lock (``lazyfs.store.usage_lock``).
- The image of every ``lazyfs mount`` record that names one, and every
  layer a live FUSE mount process of this store serves, from its command
  line (``--store ROOT --layer JSON``): a container's rootfs mount, and a
  person's ``lazyfs mount`` whatever its record says. Only a process of
  ours or of the store's owner counts, as a real mount process is: any
  user may write such a command line, to keep what it names.
- The images ``excluded_images`` names (``lazyfs.gc.config``).

What some user uses may not be known: a ``lazyfs mount`` record without a
readable image, or a live mount process of the store (of its owner or
ours) whose layers cannot be read whole (a forked one's command line is cut
to the room it has: ``lazyfs.fs.mount_server_child.set_title``) and whose
mountpoint no record names.  Then GC keeps every image and layer
(``InUse.unknown``); it still removes stale leftovers.

Blocking; reads only.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lazyfs.provision.usage import ImageRecord, containers, mounted_images
from lazyfs.store.users import work_dirs
from providers.digest import Digest
from providers.errors import Conflict


@dataclass(frozen=True)
class InUse:
    """What one GC pass keeps, with who uses it, for messages."""

    # (reference, platform) -> who: "container c1", "container c1 (volume /data)".
    images: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    layers: dict[Digest, list[str]] = field(default_factory=dict)
    # Each live mount process of the store: its pid and the layers it serves.
    mounts: tuple[tuple[int, tuple[Digest, ...]], ...] = ()
    # Users whose images are unknown: while there is one, every image is kept.
    unknown: tuple[str, ...] = ()

    def image_users(self, reference: str, platform: str, layers: Iterable[Digest]) -> list[str]:
        """Who uses the image: containers by its reference, a mount by serving its layers,
        and every user whose images are unknown."""
        chain = tuple(layers)
        users = list(self.images.get((reference, platform), []))
        users += [f"mount process {pid}" for pid, served in self.mounts if served == chain]
        return users + [f"{who} (what it uses is unknown)" for who in self.unknown]


@dataclass(frozen=True)
class MountProcess:
    """A live mount process of the store: its mountpoint and layers, None where unreadable."""

    pid: int
    mountpoint: Path | None
    layers: tuple[Digest, ...] | None  # None: its command line does not read whole
    ours: bool  # run by us or by the store's owner, as a real mount process is


def in_use(work_dir: Path, store_root: Path) -> InUse:
    """What the containers and mounts under ``work_dir``, and under every other work dir
    using the store (``lazyfs.store.users``), and the live mounts of ``store_root`` use."""
    own = work_dir.absolute()
    found = _Records()
    for work in [own, *(other for other in work_dirs(store_root) if other != own)]:
        found.read(work, "" if work == own else f" (work dir {work})")
    images, layers, unknown = found.images, found.layers, found.unknown
    mounts: list[tuple[int, tuple[Digest, ...]]] = []
    for process in mounted_layers(store_root):
        # Another user's process only looks like one: a user may name any layer on a
        # command line of theirs, to keep it from GC.
        if process.pid in found.recorded or not process.ours:
            continue
        if process.layers is not None:
            mounts.append((process.pid, process.layers))
        elif process.mountpoint not in found.mountpoints:
            # Its image is not one a record names: it could be any.
            unknown.append(f"mount process {process.pid}")
    for pid, digests in mounts:
        for digest in digests:
            layers.setdefault(digest, []).append(f"mount process {pid}")
    return InUse(images, layers, tuple(mounts), tuple(unknown))


@dataclass
class _Records:
    """What the records of work dirs say is used, and by whom; read by ``read``."""

    images: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    layers: dict[Digest, list[str]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    mountpoints: set[Path] = field(default_factory=set)  # rootfses and mounts recorded
    recorded: set[int] = field(default_factory=set)  # mount processes a record names

    def read(self, work_dir: Path, where: str) -> None:
        """The containers' and ``lazyfs mount``'s records under ``work_dir``; ``where``
        follows each user's name."""
        listed_all = containers(work_dir)
        for listed in listed_all:
            record = listed.record
            if record is None:
                if listed.problem.startswith("unreadable"):
                    raise Conflict(
                        f"container {listed.container_id}{where}: {listed.problem}: what it"
                        " uses is unknown, so image GC removes nothing; destroy or recover it"
                    )
                continue  # died half done: builds on nothing (a live one holds the usage lock)
            self.mountpoints.add(record.rootfs)
            self.mountpoints.update(volume.rootfs for volume in record.volumes)
            who = f"container {record.container_id}{where}"
            self._use(who, record.image)
            for volume in record.volumes:
                self._use(f"{who} (volume {volume.container_path})", volume.image)
        found, unrecorded = mounted_images(work_dir)
        self.unknown += [f"the lazyfs mount record {n.partition(':')[2]}" for n in unrecorded]
        for mount_dir, image in found:
            mountpoint = _read(mount_dir / "mountpoint")
            if mountpoint:
                self.mountpoints.add(Path(mountpoint))
            recorded_pid = _read(mount_dir / "pid")
            if recorded_pid.isdigit():
                self.recorded.add(int(recorded_pid))
            self._use(f"the lazyfs mount at {mountpoint or mount_dir}", image)

    def _use(self, who: str, image: ImageRecord) -> None:
        self.images.setdefault((image.reference, image.platform), []).append(who)
        for digest in image.layers:
            self.layers.setdefault(digest, []).append(who)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def mounted_layers(store_root: Path) -> list[MountProcess]:
    """Each live mount process of the store at ``store_root``, with the layers it serves.

    Read from ``/proc/PID/cmdline`` (``lazyfs.fs.mount`` starts them with
    ``--mountpoint DIR --store ROOT``, one ``--layer JSON`` per layer, and
    ``--ready-fd N`` last).  One whose line does not end so was cut, and one
    with a layer argument this version does not read may serve any layer:
    its ``layers`` are None.  A process we may not read, or that ends
    meanwhile, is passed over: a mount process runs as the user who runs
    lazyfs, whose own processes are readable.
    """
    wanted = os.fsencode(store_root.absolute())
    owners = {os.geteuid()}
    with contextlib.suppress(OSError):
        owners.add(store_root.stat().st_uid)
    found: list[MountProcess] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            owner = entry.stat().st_uid
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if _value(argv, b"--store") != wanted:
            continue
        mountpoint = _value(argv, b"--mountpoint")
        found.append(
            MountProcess(
                int(entry.name),
                None if mountpoint is None else Path(os.fsdecode(mountpoint)),
                _layers(argv),
                owner in owners,
            )
        )
    return found


def _value(argv: list[bytes], flag: bytes) -> bytes | None:
    """The word after the first ``flag`` in ``argv``; None if there is none."""
    for i, word in enumerate(argv[:-1]):
        if word == flag:
            return argv[i + 1]
    return None


def _layers(argv: list[bytes]) -> tuple[Digest, ...] | None:
    """The layers of a mount process's whole command line; None if it is not whole."""
    words = list(argv)
    while words and not words[-1]:
        words.pop()  # the zeroed rest of a forked process's room, the final NUL
    if len(words) < 2 or words[-2] != b"--ready-fd" or not words[-1].isdigit():
        return None  # cut: the layers after the cut are unknown
    digests = []
    for i, word in enumerate(words[:-1]):
        if word != b"--layer":
            continue
        try:
            digest = json.loads(words[i + 1])["digest"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(digest, str):
            return None
        digests.append(Digest(digest))
    return tuple(digests)
