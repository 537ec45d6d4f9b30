"""What ``lazyfs mount`` mounted under a work dir, as ``lazyfs mount`` alone lists it.

Read from the mounts' records alone (``lazyfs.provision.devmount`` says what
they hold; ``lazyfs.provision.usage.mounted_images`` reads their images): no
store, no provisioner, so listing creates nothing on disk, as ``lazyfs ps``
does. A record stays until ``lazyfs umount``, so a mount that is gone (a
reboot, an unmount behind lazyfs' back) is listed as gone, not hidden: its
record still keeps its image from GC.

Each mount's state is the word ``lazyfs ps`` gives a fuse rootfs
(``lazyfs.provision.revive.mount_state``): ``alive``, ``dead`` (its process is
gone), ``not answering`` (its process is stopped or stuck), ``not mounted``;
``unreadable`` for a record that cannot be read (one being written, or
damaged). The mounts are asked side by side, with the mount table read once:
a stopped one costs its seconds once, and never hangs the listing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lazyfs.provision.revive import AT_ONCE, mount_state
from lazyfs.provision.usage import ImageRecord, mounted_images
from providers.mountinfo import mount_point_set


def _describe(record: Path, image: ImageRecord, points: frozenset[Path]) -> dict[str, Any]:
    try:
        # Written by ``devmount`` as the absolute path and a newline.
        mountpoint = (record / "mountpoint").read_text(encoding="utf-8").removesuffix("\n")
    except (OSError, ValueError) as error:
        return _unreadable(record, error)
    writable = (record / "upper").is_dir()  # only a --writable mount has one
    try:
        pid: int | None = int((record / "pid").read_text())
    except (OSError, ValueError):
        pid = None  # not up yet, or the record of an older lazyfs
    return {
        "mountpoint": mountpoint,
        "image": image.reference,
        "digest": image.digest,
        "platform": image.platform,
        "mode": "rw" if writable else "ro",
        "writable": writable,
        "pid": pid,
        "mount": mount_state("fuse", Path(mountpoint), points),
    }


def _unreadable(record: Path, why: object) -> dict[str, Any]:
    return {"mountpoint": None, "mount": "unreadable", "problem": f"record {record}: {why}"}


def mounts(work_dir: Path) -> list[dict[str, Any]]:
    """The mounts recorded under ``work_dir``, as ``lazyfs mount --json`` lists them, by
    mount point. Creates nothing; none when ``work_dir`` does not exist. Blocking."""
    found, unknown = mounted_images(work_dir)
    # After the records: a mount is made after its record is written.
    points = mount_point_set()
    with ThreadPoolExecutor(max(1, min(AT_ONCE, len(found)))) as pool:
        items = list(pool.map(lambda one: _describe(one[0], one[1], points), found))
    items.extend(
        _unreadable(Path(name.removeprefix("mount:")), "no readable image.json") for name in unknown
    )
    return sorted(items, key=lambda item: (item["mountpoint"] is None, item["mountpoint"] or ""))
