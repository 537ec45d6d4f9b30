"""``lazyfs ps``: the provisioned containers, as a table or as JSON.

Read from the containers' records alone (``lazyfs.provision.usage``): no
store, no provisioner, so it creates nothing on disk, as ``images`` does.
Each container's mount state (``lazyfs.provision.revive.mount_state``) says
whether its rootfs and volumes work:

    alive        every mount is there and answers
    dead         one is still in the mount table but its process is gone
    not answering  one's process is stopped or stuck (it did not answer within seconds)
    not mounted  one is gone (a reboot, an unmount): ``recover --keep`` mounts it again
    directory    the copy backend's plain directory (no mount), present
    missing      the copy backend's directory is gone
    incomplete   its provision is under way, or died (``recover`` removes it)
    destroying   its destroy is under way, or died (``recover`` finishes it,
                 ``--keep`` or not); its mounts are not looked at
    unreadable   its record cannot be read

The worst state of its rootfs and volumes is the container's (``mount`` in
the JSON, beside ``rootfs_mount`` and each volume's); the table's MOUNT says
the rootfs's, then each volume's that differs (``alive, volume /data dead``),
so a dead volume is not taken for a dead rootfs. Containers are
looked at side by side: a mount that does not answer costs seconds, once, not
once per such container. The mount table is read once for them all, not once
per mount: with a thousand containers, each read is of a thousand lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lazyfs.provision.revive import mount_state
from lazyfs.provision.usage import ContainerRecord, Listed, VolumeRecord, containers
from providers.mountinfo import mount_point_set

# Worst last: a container shows the worst of its rootfs's and volumes' states.
_ORDER = ("alive", "directory", "not mounted", "missing", "not answering", "dead", "destroying")
_HEADER = ("ID", "BACKEND", "IMAGE", "ROOTFS", "VOLUMES", "WRITABLE", "MOUNT")
_AT_ONCE = 32  # containers looked at side by side


def _worst(states: list[str]) -> str:
    return max(states, key=_ORDER.index)


def _volume_json(volume: VolumeRecord, state: Callable[[Path], str]) -> dict[str, Any]:
    return {
        "container_path": volume.container_path,
        "mode": volume.mode,
        "image": volume.image.reference,
        "rootfs": str(volume.rootfs),
        "writable": volume.writable,
        "mount": state(volume.rootfs),
    }


def describe(listed: Listed, points: Collection[Path] | None = None) -> dict[str, Any]:
    """``listed`` as ``ps --json`` gives it.

    ``points``: the mount table read once for every container
    (``mount_point_set``); None, read for each mount.
    """
    record: ContainerRecord | None = listed.record
    if record is None:
        word = "unreadable" if listed.problem.startswith("unreadable") else "incomplete"
        word = "destroying" if listed.destroying else word
        return {"container_id": listed.container_id, "mount": word, "problem": listed.problem}
    backend = record.backend

    def state(rootfs: Path) -> str:
        # One being destroyed may be half taken down: what its mounts say is not what it
        # is, and one that no longer answers would cost seconds for nothing.
        return "destroying" if listed.destroying else mount_state(backend, rootfs, points)

    volumes = [_volume_json(v, state) for v in record.volumes]
    rootfs_state = state(record.rootfs)
    item = {
        "container_id": record.container_id,
        "backend": backend,
        "image": record.image.reference,
        "digest": record.image.digest,
        "platform": record.image.platform,
        "rootfs": str(record.rootfs),
        "writable": record.writable,
        "mount": _worst([rootfs_state, *(v["mount"] for v in volumes)]),
        "rootfs_mount": rootfs_state,
        "volumes": volumes,
    }
    if listed.destroying:
        item["problem"] = listed.problem
    return item


def _mount_cell(item: dict[str, Any]) -> str:
    """The MOUNT cell: the rootfs's state, then each volume whose state is another.

    Not the worst of them alone (``mount`` in the JSON): one dead volume must
    not read as a dead rootfs, when ``rootfs_mount`` says it is alive.
    """
    rootfs_state = item["rootfs_mount"]
    others = [
        f"volume {v['container_path']} {v['mount']}"
        for v in item["volumes"]
        if v["mount"] != rootfs_state
    ]
    return ", ".join([rootfs_state, *others])


def _row(item: dict[str, Any]) -> tuple[str, ...]:
    if "backend" not in item:
        return (item["container_id"], "-", "-", "-", "-", "-", item["mount"])
    volumes = ", ".join(f"{v['container_path']}:{v['image']}:{v['mode']}" for v in item["volumes"])
    return (
        item["container_id"],
        item["backend"],
        item["image"],
        item["rootfs"],
        volumes or "-",
        "yes" if item["writable"] else "no",
        _mount_cell(item),
    )


def ps(work_dir: Path, *, as_json: bool) -> int:
    """Print the containers under ``work_dir``; 0. Creates nothing."""
    listed = containers(work_dir)
    # After the records: a rootfs is mounted before its record says it is complete.
    points = mount_point_set()
    with ThreadPoolExecutor(max(1, min(_AT_ONCE, len(listed)))) as pool:
        items = list(pool.map(lambda one: describe(one, points), listed))
    if as_json:
        print(json.dumps(items, indent=1))
        return 0
    rows = [_HEADER, *(_row(item) for item in items)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0
