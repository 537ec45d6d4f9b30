"""The /etc/hosts and /etc/hostname of a container ``lazyfs run`` runs, as docker gives them.

Without them a container cannot resolve ``localhost`` (busybox: "bad
address 'localhost'") and ``hostname -i`` fails. docker writes both per
container, in files of its own, and bind-mounts them over the image's; so
does ``lazyfs run``, in the container's runtime bundle, which goes with the
container.

The container's network namespace has ``lo`` alone, so hosts names the
loopback addresses, and the hostname at 127.0.1.1 (Debian's entry for a
machine with no address of its own; all of 127/8 is on ``lo``) where docker
names the container's bridge address. /etc/resolv.conf is left as the image
has it: with no network there is no name server to name.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from lazyfs.store.atomic import write_atomic
from providers.private_dir import private_dir

NAMES = ("hosts", "hostname")

_LABEL_MOST = 63  # characters of a DNS label, and within the kernel's 64 for a hostname


def hostname_for(container_id: str) -> str:
    """The hostname of container ``container_id``: its id as ``lazyfs ps`` lists it.

    docker's is the first 12 characters of its 64-hex-digit id, the id as
    ``docker ps`` shows it; a ``lazyfs run`` id (``run-`` and 12 hex digits)
    is short enough to be taken whole, which is what ``lazyfs ps`` shows. A
    longer id (a caller's own) is cut to a DNS label's length.
    """
    return container_id[:_LABEL_MOST]


def hosts_text(hostname: str) -> str:
    return (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )


def write(bundle: Path, hostname: str) -> None:
    """Write the container's hosts and hostname files into ``bundle``."""
    private_dir(bundle)
    texts = {"hosts": hosts_text(hostname), "hostname": f"{hostname}\n"}
    for name in NAMES:
        # 0644 as the image's own: a user the command runs as reads it through the
        # mount; the bundle's 0700 is not on that path.
        write_atomic(bundle / name, texts[name].encode(), mode=0o644, durable=False)


def mounts(bundle: Path, rootfs: Path, etc: Path | None, *, readonly: bool) -> list[dict[str, Any]]:
    """The bind mounts of ``write``'s files over the container's /etc/hosts and /etc/hostname.

    Only where the rootfs has /etc as a directory (``etc``: the container's /etc
    on this machine, symlinks resolved, None for the rootfs' own): a /etc that a
    volume is, is the volume's alone. Each file is mounted over the image's where
    that is a regular file, or where it is missing and runc can make it (the
    rootfs is writable here, even if runc makes it read-only after: ``run
    --read-only`` on the copy backend); else left alone, so that a read-only
    rootfs without the file still starts (docker has an init layer for this;
    lazyfs has none). A symlink or directory there is the image's choice. A
    volume at one of them is the user's choice: ``give_way``.

    Writable unless the rootfs is read-only, as docker mounts them: a program may
    add a name to /etc/hosts, and the file is the container's own and goes with
    it.
    """
    if etc is None:
        etc = rootfs / "etc"
        if not etc.is_dir() or etc.is_symlink():
            return []
    elif not etc.is_relative_to(rootfs) or not etc.is_dir():
        return []
    found = []
    for name in NAMES:
        try:
            if not stat.S_ISREG(os.lstat(etc / name).st_mode):
                continue
        except FileNotFoundError:
            if not os.access(etc, os.W_OK):  # a read-only filesystem too (EROFS)
                continue
        except OSError:
            continue
        options = ["bind", "nosuid", "nodev", "noexec", "ro" if readonly else "rw"]
        found.append(
            {
                "destination": f"/etc/{name}",
                "type": "bind",
                "source": str(bundle / name),
                "options": options,
            }
        )
    return found


def give_way(bundle: Path, spec_mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``spec_mounts`` without ``mounts``' mount of a file in ``bundle`` where another mount
    (a volume the caller added after) is at its path, over it (/etc) or in it.

    The user's mount wins, as docker leaves out its own /etc/hosts where a user's mount
    is at that path. Kept, it would make runc first make the missing file in the image's
    rootfs (where it stays, on a writable one) and mount it, then fail to mount the volume,
    a directory, over that file.
    """
    ours = {str(bundle / name) for name in NAMES}
    others = [PurePosixPath(m["destination"]) for m in spec_mounts if m.get("source") not in ours]

    def covered(mount: dict[str, Any]) -> bool:
        path = PurePosixPath(mount["destination"])
        return any(path.is_relative_to(other) or other.is_relative_to(path) for other in others)

    return [m for m in spec_mounts if m.get("source") not in ours or not covered(m)]
