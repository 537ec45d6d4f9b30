"""Image volumes on the command line: ``--volume``, ``--container-info``, and runc's mounts.

``provision`` and ``run`` take a container's images three ways: IMAGE or
``--image-file`` for the rootfs, ``--volume CONTAINER_PATH:IMAGE[:ro|rw]``
(repeatable) for each image volume, or ``--container-info FILE``, Mesos'
ContainerInfo in protobuf's JSON form with both (``lazyfs.provision.volumes``).
All of it is checked before anything is fetched.

``run`` bind-mounts each volume's rootfs at its path in the container,
read-only unless its mode is ``rw`` (``volume_mounts``), outer paths first,
after runc's own mounts (/proc, a tmpfs at /dev...), and looks for the
command, its working directory and its user in the container those mounts
make (``container_view``), volumes included. Where runc could not mount a
volume, that is one line before runc runs rather than runc's log line
after it: runc resolves each path in what is mounted before it (the
rootfs, its own mounts and the volumes outside it), mounts on a directory
there, and makes a missing one only where it can write; it mounts none
in /proc, nor over the container's root; and a volume whose path leads
(through a symlink) to an earlier volume or above it would hide that one,
which lazyfs refuses. Nor does runc start with a volume
over its /dev, or at the /dev/null or /dev/ptmx it makes there: once all
is mounted runc makes its device nodes and links in its /dev where nothing
is (``RUNC_DEV``), and uses those two.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyfs.cli_exec import ContainerView, Place
from providers.errors import UsageError

if TYPE_CHECKING:
    # Loaded by the commands that take images only: the parser needs none of it.
    from lazyfs.provision.records import ProvisionInfo, VolumeInfo
    from lazyfs.provision.volumes import ContainerSpec
    from providers.image_pb2 import Image

VOLUME_HELP = (
    "mount IMAGE's rootfs at CONTAINER_PATH, read-only unless :rw; repeatable "
    "(IMAGE as for the rootfs; a final :ro or :rw is the mode) (default: no volume)"
)
CONTAINER_INFO_HELP = (
    "a file holding Mesos' ContainerInfo in protobuf's JSON form: the rootfs image "
    "(mesos.image) and image volumes (volumes), instead of IMAGE (default: none)"
)

# What runc makes in the container's /dev (its tmpfs there) once everything is mounted, where
# nothing is (a volume at /dev/zero stays): its default device nodes (""), and symlinks.
RUNC_DEV = {
    **dict.fromkeys(("null", "zero", "full", "random", "urandom", "tty"), ""),
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",  # in place of whatever is there
}
# Those of them runc uses: it opens /dev/null in the container, and replaces /dev/ptmx.
_RUNC_USES = ("null", "ptmx")


def add_volume_args(sub: argparse.ArgumentParser) -> None:
    """``--volume`` and ``--container-info``, for ``provision`` and ``run``."""
    sub.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="CONTAINER_PATH:IMAGE[:ro|rw]",
        help=VOLUME_HELP,
    )
    sub.add_argument(
        "--container-info",
        "--container_info",
        dest="container_info",
        type=Path,
        metavar="FILE",
        help=CONTAINER_INFO_HELP,
    )


def container_request(args: argparse.Namespace, image: Callable[[], Image]) -> ContainerSpec:
    """The rootfs image and volumes the arguments name; ``image`` reads IMAGE/--image-file."""
    from lazyfs.provision.volumes import (
        ContainerSpec,
        check_volumes,
        container_from_file,
        parse_volume,
        with_volumes,
    )

    volumes = [parse_volume(text) for text in args.volume]
    if args.container_info is None:
        return ContainerSpec(image(), check_volumes(volumes))
    if args.image or args.image_file is not None:
        raise UsageError("give IMAGE, --image-file or --container-info, only one")
    return with_volumes(container_from_file(args.container_info), volumes)


def volume_mounts(info: ProvisionInfo) -> list[dict[str, Any]]:
    """The OCI runtime spec's mounts for ``info``'s volumes, outer paths first, to follow
    runc's own; ``container_view`` tells first whether runc can mount them."""
    from lazyfs.provision.volumes import RW

    return [
        {
            "destination": volume.container_path,
            "type": "bind",
            "source": str(volume.rootfs),
            # rprivate: mounts made inside the container stay out of the store.
            "options": ["rbind", "rprivate", "rw" if volume.mode == RW else "ro"],
        }
        for volume in _outer_first(info.volumes)
    ]


def container_view(info: ProvisionInfo, runc: Sequence[Mapping[str, Any]] = ()) -> ContainerView:
    """``info``'s container as its command will see it: the rootfs, runc's own mounts
    (``runc``: the runtime spec's, as ``runtime.runc_mounts`` lists them), each volume
    over them, and the nodes runc makes in its /dev after (``RUNC_DEV``).

    UsageError, naming the volume, unless its path leads to a directory in
    what is mounted before it, or is missing there below a directory runc
    can make it in: on a writable rootfs, an ``rw`` volume or a tmpfs; and
    unless it leaves runc's /dev, /dev/null and /dev/ptmx to runc.
    """
    from lazyfs.provision.volumes import RW

    view = ContainerView(info.rootfs, info.writable)
    for mount in runc:
        view = _with_runc_mount(view, mount)
    # Where runc's tmpfs at /dev went (symlinks resolved); None: it is not mounted.
    dev = next((m.parts for m in view.mounts if m.source is None and m.name == "/dev"), None)
    for volume in _outer_first(info.volumes):
        path = volume.container_path
        # As runc finds where to mount it (or make it): missing parts taken as names.
        place = view.find(path, past_missing=True)
        if place is None:
            raise UsageError(f"volume {path}: {path} has too many levels of symbolic links")
        problem = (
            _runc_dev_problem(place, dev)
            or _hidden_volume(view, place)
            or _mount_point_problem(view, place, path, info.backend)
        )
        if problem is not None:
            raise UsageError(f"volume {path}: {problem}")
        writable = volume.mode == RW and volume.writable
        view = view.mounted(place, volume.rootfs, writable=writable, name=path)
    if dev is None:
        return view
    nodes = dict(RUNC_DEV)
    if os.path.exists("/proc/kcore"):  # runc's rule: where this machine has one
        nodes["core"] = "/proc/kcore"
    made = [((*dev, name), target) for name, target in nodes.items()]
    # The devpts runc mounts at /dev/pts has its ptmx, which /dev/ptmx leads to.
    made += [((*m.parts, "ptmx"), "") for m in view.mounts if m.kind == "devpts"]
    return replace(view, nodes=tuple(made))


def _outer_first(volumes: tuple[VolumeInfo, ...]) -> list[VolumeInfo]:
    return sorted(
        volumes, key=lambda volume: (volume.container_path.count("/"), volume.container_path)
    )


def _with_runc_mount(view: ContainerView, mount: Mapping[str, Any]) -> ContainerView:
    """``view`` with one of runc's own mounts in it: a tmpfs empty and writable unless
    ``ro``, a devpts or mqueue with no directory nor a way to make one (mkdir: EPERM),
    the kernel's proc and sysfs not looked in."""
    destination, kind = str(mount["destination"]), str(mount["type"])
    if kind in ("proc", "sysfs"):
        # runc mounts these on the path as written, never through a symlink.
        parts = tuple(part for part in destination.split("/") if part)
        place: Place | None = Place(parts, len(parts))
    else:
        place = view.find(destination, past_missing=True)  # as it finds a volume's
    if place is None or not place.parts:
        return view  # through a loop, or to the root: runc's own mount fails, as it did
    writable = kind == "tmpfs" and "ro" not in mount.get("options", ())
    return view.mounted(place, None, writable=writable, name=destination, kind=kind)


def _runc_dev_problem(place: Place, dev: tuple[str, ...] | None) -> str | None:
    """Why a volume that leads to ``place`` would keep runc from starting, given where its
    tmpfs at /dev is (``dev``); None if it would not."""
    if dev is None or not place.parts:
        return None
    if dev[: len(place.parts)] == place.parts:
        # runc takes a bind mount at /dev for a /dev of the container's own and makes no
        # device node: it fails on /dev/null, in its own words.
        return "it would hide runc's tmpfs at /dev, which holds the container's device nodes"
    for name in _RUNC_USES:
        if place.parts[: len(dev) + 1] == (*dev, name):
            return f"runc makes the container's /dev/{name} itself, and uses it"
    return None


def _hidden_volume(view: ContainerView, place: Place) -> str | None:
    """Which volume mounted before would be hidden by one that leads to ``place``.

    Mounted outer paths first as written, a volume whose path leads through a
    symlink to where an earlier one is, or above it, covers that one whole.
    """
    depth = len(place.parts)
    for mount in view.mounts:
        if mount.source is not None and mount.parts[:depth] == place.parts:
            where = "/" + "/".join(place.parts)
            return f"it leads to {where}, where it would hide volume {mount.name}"
    return None


def _mount_point_problem(
    view: ContainerView, place: Place, path: str, backend: str = ""
) -> str | None:
    """Why runc could not mount a volume at ``path``, which leads to ``place``; None if it can."""
    holder = view.holder(place.parts)
    if holder is not None and holder.kind == "proc":
        # runc's own rule: nothing but a proc at /proc, nothing in it (but lxcfs' files).
        return "runc mounts no volume on the container's /proc or in it"
    if not place.parts:
        return f"{path} leads to the container's root"
    if not place.seen:
        # In /sys runc mounts on a directory the kernel has there (/sys/fs/cgroup) and
        # fails to make a missing one (read-only); which it is, the kernel tells runc alone.
        return None
    found = place.found
    where = view.named(found)
    if len(found) == len(place.parts):
        if view.is_dir(found):
            return None
        return f"{path} is not a directory in {where} to mount it on"
    if not view.is_dir(found):
        return f"{path} is under a file in {where}"
    if view.can_make(found):
        return None  # runc makes it
    what, fix = view.read_only(found)
    if backend == "bind" and view.holder(found) is None:
        fix = "make it in the image, or run with --backend copy, overlay or fuse"  # read-only
    return f"{what} has no {path} to mount it on ({fix})"
