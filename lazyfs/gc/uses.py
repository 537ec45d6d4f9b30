"""What image GC must keep: what containers, mounts and the config use.

- Every provisioned container's images, its rootfs's and its image
  volumes', by reference and by layer, read from the containers' records
  under the work dir.  A container whose
  provision died before its record was written builds on nothing any
  more (``recover`` removes it), so it keeps nothing; one whose provision
  is under way cannot be seen here, which is why GC and provisions take
  the store's usage lock (``lazyfs.store.usage_lock``).
- The image of every ``lazyfs mount`` record that names one, and every
  layer a live FUSE mount process of this store serves, from its command
  line (``--store ROOT --layer JSON``): a container's rootfs mount, and a
  person's ``lazyfs mount`` whatever its record says.
- The images ``excluded_images`` names (``lazyfs.gc.config``).

Blocking; reads only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lazyfs.provision.usage import containers, mounted_images
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

    def image_users(self, reference: str, platform: str, layers: Iterable[Digest]) -> list[str]:
        """Who uses the image: containers by its reference, a mount by serving its layers."""
        chain = tuple(layers)
        users = list(self.images.get((reference, platform), []))
        users += [f"mount process {pid}" for pid, served in self.mounts if served == chain]
        return users


def in_use(work_dir: Path, store_root: Path) -> InUse:
    """What the containers under ``work_dir`` and the live mounts of ``store_root`` use."""
    images: dict[tuple[str, str], list[str]] = {}
    layers: dict[Digest, list[str]] = {}
    for listed in containers(work_dir):
        record = listed.record
        if record is None:
            if listed.problem.startswith("unreadable"):
                raise Conflict(
                    f"container {listed.container_id}: {listed.problem}: what it uses is "
                    "unknown, so image GC removes nothing; destroy or recover it"
                )
            continue  # died half done: builds on nothing (a live one holds the usage lock)
        uses = [(f"container {record.container_id}", record.image)]
        uses += [
            (f"container {record.container_id} (volume {volume.container_path})", volume.image)
            for volume in record.volumes
        ]
        for who, image in uses:
            images.setdefault((image.reference, image.platform), []).append(who)
            for digest in image.layers:
                layers.setdefault(digest, []).append(who)
    recorded: set[int] = set()  # mount processes a record names already
    for mount_dir, image in mounted_images(work_dir)[0]:
        who = f"the lazyfs mount at {_read(mount_dir / 'mountpoint') or mount_dir}"
        recorded_pid = _read(mount_dir / "pid")
        if recorded_pid.isdigit():
            recorded.add(int(recorded_pid))
        images.setdefault((image.reference, image.platform), []).append(who)
        for digest in image.layers:
            layers.setdefault(digest, []).append(who)
    mounts = [(pid, digests) for pid, digests in mounted_layers(store_root) if pid not in recorded]
    for pid, digests in mounts:
        for digest in digests:
            layers.setdefault(digest, []).append(f"mount process {pid}")
    return InUse(images, layers, tuple(mounts))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def mounted_layers(store_root: Path) -> list[tuple[int, tuple[Digest, ...]]]:
    """The layers each live mount process of the store at ``store_root`` serves, by pid.

    Read from ``/proc/PID/cmdline`` (``lazyfs.fs.mount`` starts them with
    ``--store ROOT`` and one ``--layer JSON`` per layer).  A process we may
    not read, or that ends meanwhile, is passed over: a mount process runs
    as the user who runs lazyfs, whose own processes are readable.
    """
    wanted = os.fsencode(store_root.absolute())
    found: list[tuple[int, tuple[Digest, ...]]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not _serves(argv, wanted):
            continue
        found.append((int(entry.name), tuple(_layers(argv))))
    return found


def _serves(argv: list[bytes], store: bytes) -> bool:
    return any(
        word == b"--store" and i + 1 < len(argv) and argv[i + 1] == store
        for i, word in enumerate(argv)
    )


def _layers(argv: list[bytes]) -> Iterable[Digest]:
    for i, word in enumerate(argv[:-1]):
        if word != b"--layer":
            continue
        try:
            digest = json.loads(argv[i + 1])["digest"]
        except (ValueError, KeyError, TypeError):
            continue  # not a layer argument this version reads: nothing to keep for it
        if isinstance(digest, str):
            yield Digest(digest)
