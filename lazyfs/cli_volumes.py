"""Image volumes on the command line: ``--volume``, ``--container-info``, and runc's mounts.

``provision`` and ``run`` take a container's images three ways: IMAGE or
``--image-file`` for the rootfs, ``--volume CONTAINER_PATH:IMAGE[:ro|rw]``
(repeatable) for each image volume, or ``--container-info FILE``, Mesos'
ContainerInfo in protobuf's JSON form with both (``lazyfs.provision.volumes``).
All of it is checked before anything is fetched.

``run`` bind-mounts each volume's rootfs at its path in the container,
read-only unless its mode is ``rw`` (``volume_mounts``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyfs.cli_exec import in_root
from providers.errors import UsageError

if TYPE_CHECKING:
    # Loaded by the commands that take images only: the parser needs none of it.
    from lazyfs.provision.records import ProvisionInfo
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
    """The OCI runtime spec's mounts for ``info``'s volumes, outer paths first.

    A read-only rootfs cannot be given a directory to mount on, so each
    path must be in it already (UsageError otherwise, before runc runs).
    """
    from lazyfs.provision.volumes import RW

    mounts = []
    depth = lambda volume: (volume.container_path.count("/"), volume.container_path)  # noqa: E731
    for volume in sorted(info.volumes, key=depth):
        if not info.writable and in_root(info.rootfs, volume.container_path) is None:
            raise UsageError(
                f"volume {volume.container_path}: the read-only rootfs has no "
                f"{volume.container_path} to mount it on (run it without --read-only)"
            )
        mounts.append(
            {
                "destination": volume.container_path,
                "type": "bind",
                "source": str(volume.rootfs),
                # rprivate: mounts made inside the container stay out of the store.
                "options": ["rbind", "rprivate", "rw" if volume.mode == RW else "ro"],
            }
        )
    return mounts
