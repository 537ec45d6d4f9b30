"""Which mount points exist in this process's mount namespace (``/proc/self/mountinfo``).

Read-only and free of mounting code, so both the backends and the public
mount API of lazyfs can ask without loading each other.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

# mountinfo writes space, tab, newline and backslash in paths as \ooo.
_ESCAPES = ("\\040", "\\011", "\\012", "\\134")


def mount_points() -> list[Path]:
    """Every mount point of this mount namespace, in mount order."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split(" ")
            if len(fields) > 4:
                points.append(Path(_unescape(fields[4])))
    return points


def filesystem_type(path: Path) -> str:
    """The type of the filesystem ``path`` is on ("overlay", "ext4"), for a message:
    the deepest mount holding it (of several on one point, the last mounted)."""
    where = os.path.realpath(path)
    found, longest = "an unknown filesystem", -1
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            lines = table.readlines()
    except OSError:  # no /proc: a message goes without this detail
        return found
    for line in lines:
        fields = line.split(" ")
        if " - " not in line or len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if (where == point or where.startswith(point.rstrip("/") + "/")) and len(point) >= longest:
            found, longest = line.split(" - ", 1)[1].split(" ")[0], len(point)
    return found


def mount_point_set() -> frozenset[Path]:
    """Every mount point of this mount namespace, read once for many questions.

    Asking ``is_mounted`` of a thousand rootfses reads and parses the table a
    thousand times, each as long as the thousand mounts make it: one pass
    over many mounts (``lazyfs ps``, ``recover``) reads it once into this.
    It is a snapshot: what decides to act on a mount asks afresh.
    """
    return frozenset(mount_points())


def is_mounted(mountpoint: Path, points: Collection[Path] | None = None) -> bool:
    """Whether ``mountpoint`` is a mount point in this mount namespace (a dead FUSE one too).

    ``points``: the mount points read earlier (``mount_point_set``); None, the
    table is read now.
    """
    if points is None:
        points = mount_points()
    return real_path(mountpoint) in points


def real_path(path: Path) -> Path:
    """``path`` as the mount table names it: absolute, through every symlink on the way to it.

    A work dir may be reached through one (``/var/run`` is ``/run`` on Debian).
    The last component is kept as it is: a mount point is no symlink, and
    looking at it would ask a FUSE mount there (a wedged one too) for its
    attributes. What cannot be looked at (a missing parent) is kept as written.
    """
    absolute = Path(os.path.abspath(path))
    return Path(os.path.realpath(absolute.parent)) / absolute.name


def _unescape(field: str) -> str:
    for code in _ESCAPES:
        field = field.replace(code, chr(int(code[1:], 8)))
    return field
