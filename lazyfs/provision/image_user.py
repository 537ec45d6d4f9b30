"""Who a container's process runs as: the image's ``User``, its /etc/passwd and /etc/group.

Worked out as Docker does with runc: a name or uid, with an optional group;
the group, supplementary groups and home directory from the image's own
tables, never the host's. The tables are the image's to make: only a
regular file is read, and at most ``MAX_TABLE`` bytes of it. runc reads
them in the container, once its volumes are mounted, symlinks followed from
the container's root: so does ``resolve_user``, never out of the rootfs. The
caller that knows the container's mounts finds its /etc (``etc``), which a
volume may be.
Either way a message names a table as the container has it, /etc/passwd.
runc's own reading of them is made safe first (``check_tables``): it opens
both whoever the user is, and a FIFO there would hold its init for ever.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from providers.errors import BadImage
from providers.layer_entry import MAX_ID

_ID = re.compile(r"[0-9]{1,10}")
MAX_TABLE = 4 << 20  # bytes of /etc/passwd or /etc/group read: far more than any has
MAX_GROUPS = 65536  # NGROUPS_MAX: setgroups takes no more
_MAX_LINKS = 40  # as Linux's path walk: past it runc's open fails (ELOOP), no table
# runc's own filesystems (runtime.runc_mounts: /dev/pts and the like are under /dev): a
# table there is not the image's. Not taken from there, as runtime imports this module;
# a test keeps the two in step.
RUNC_OWN = frozenset({"/proc", "/dev", "/sys"})
DEV_NULL = "/dev/null"  # where an image may point a table it does without

# What a table that is no regular file is, and what runc's init would do with it.
_NOT_FILES = {
    stat.S_IFIFO: ("a FIFO", "runc would wait on it for ever"),
    stat.S_IFCHR: ("a character device", "runc would read the device as the container starts"),
    stat.S_IFBLK: ("a block device", "runc would read the device as the container starts"),
    stat.S_IFSOCK: ("a socket", "runc reads it as the container starts"),
    stat.S_IFDIR: ("a directory", "runc reads it as the container starts"),
}


@dataclass(frozen=True)
class ImageUser:
    """Who a container's process runs as, worked out as Docker does (with runc)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary
    home: str = "/"


def resolve_user(rootfs: Path, user: str, etc: Path | None = None) -> ImageUser:
    """``user`` as Docker takes it (name, uid, name:group, uid:gid; empty is root).

    Names are looked up in the container's /etc/passwd and /etc/group, never
    the host's: in ``etc``, the directory that is the container's /etc when
    the caller found it on this machine (symlinks and mounts resolved in the
    container), else in the rootfs' own /etc; a symlink on the way is followed
    as runc follows it, from the container's root (``_read_table``). A scratch
    image, which has no /etc, has no tables. An unknown name is an error,
    as in Docker. The user's passwd row (by name, or by uid when a number)
    gives the group when none is given, and the home directory (``/``
    without one). Without a group given, the supplementary groups are those
    /etc/group lists the row's name in.
    """
    name, _, group = user.partition(":")
    # The rows whose ids are numbers (a hostile row's are not taken for 0), as
    # (name, uid, gid, home); the first that matches wins.
    rows = [
        (row[0], uid, gid, row[5] if len(row) > 5 and row[5] else "/")
        for row in _read_table(rootfs, etc, "passwd")
        if len(row) > 3 and (uid := _id(row[2])) is not None and (gid := _id(row[3])) is not None
    ]
    wanted = _id(name) if name else 0
    if wanted is not None:
        found = next((row for row in rows if row[1] == wanted), None)
        login, uid, gid, home = found or ("", wanted, 0, "/")
    else:
        found = next((row for row in rows if row[0] == name), None)
        if found is None:
            raise BadImage(f"user {name[:100]!r} is not in the image's /etc/passwd")
        login, uid, gid, home = found
    table = _read_table(rootfs, etc, "group")
    if group:
        group_id = _id(group)
        if group_id is None:
            named = (_id(row[2]) for row in table if len(row) > 2 and row[0] == group)
            group_id = next((number for number in named if number is not None), None)
            if group_id is None:
                raise BadImage(f"group {group[:100]!r} is not in the image's /etc/group")
        return ImageUser(uid, group_id, (), home)
    groups = tuple(
        number
        for entry in table
        if login
        and len(entry) > 3
        and login in entry[3].split(",")
        and (number := _id(entry[2])) is not None
    )
    if len(groups) > MAX_GROUPS:
        raise BadImage(
            f"user {login!r} is in more than {MAX_GROUPS} groups of the image's /etc/group"
        )
    return ImageUser(uid, gid, groups, home)


def check_tables(rootfs: Path, etc: Path | None, runc_own: Iterable[str]) -> None:
    """BadImage when the container's /etc/passwd or /etc/group is there but is no regular file.

    runc's init opens both (Go's ``os.Open``: symlinks followed, from the
    container's root) for every user, "0:0" too, once the container's mounts
    are in place, and reads each to its end before the command runs. A FIFO
    holds that open for ever, out of reach of the signals runc passes on (it
    passes none before the container runs); a device, or a file of runc's
    own filesystems (``runc_own``: /proc, /dev, /sys...; /dev/ptmx, the
    caller's stdin as /proc/self/fd/0), may be read for ever or wait for
    input. So each is looked up as runc would open it: in ``etc`` (the
    container's /etc as ``resolve_user`` takes it) else the rootfs' /etc, a
    symlink followed in the rootfs (the volumes but one at /etc are not
    looked into), and refused unless it leads to a regular file. None there,
    a dangling symlink, a loop or a file on the way (ENOTDIR) are no table
    for runc either: fine. Only lstat and readlink: nothing is opened.
    """
    own = frozenset(runc_own)
    roots, base = _roots(rootfs, etc)
    for name in ("passwd", "group"):
        found = _follow(roots, [*base, name], own)
        if found is None:
            continue
        mode, where = found
        shown = f"the image's /etc/{name}"
        if where == DEV_NULL:
            continue  # an empty table to runc, as to ``resolve_user``
        if where in own:
            raise BadImage(
                f"{shown} leads into {where}, which runc mounts: only a regular file of the"
                " image is a table, and runc would read it as the container starts"
            )
        if stat.S_ISREG(mode):
            continue
        kind, why = _NOT_FILES.get(stat.S_IFMT(mode), ("no regular file", "runc reads it"))
        # Where a symlink led is the image's text: not shown.
        verb = "is" if where == "/" + "/".join((*base, name)) else "leads to"
        raise BadImage(f"{shown} {verb} {kind}: {why}")


def _roots(rootfs: Path, etc: Path | None) -> tuple[dict[tuple[str, ...], Path], tuple[str, ...]]:
    """The container's directories on this machine (container path: host directory) for
    ``_follow``, and the container path of the /etc its tables are looked up in."""
    roots: dict[tuple[str, ...], Path] = {(): rootfs}
    base: tuple[str, ...] = ("etc",)
    if etc is not None and etc.is_relative_to(rootfs):
        base = etc.relative_to(rootfs).parts
    elif etc is not None:  # a volume is the container's /etc: what is in it is its own
        roots[base] = etc
    return roots, base


def _under(roots: dict[tuple[str, ...], Path], parts: list[str]) -> tuple[Path, list[str]]:
    """The deepest of ``roots`` the container path ``parts`` is in, and the rest of it."""
    prefix = max((p for p in roots if tuple(parts[: len(p)]) == p), key=len)
    return roots[prefix], parts[len(prefix) :]


def _follow(
    roots: dict[tuple[str, ...], Path], parts: list[str], runc_own: frozenset[str]
) -> tuple[int, str] | None:
    """Where the container path ``parts`` leads, symlinks followed as the kernel follows
    them in the container (an absolute target from its root, ``..`` stopping there):
    its mode and path; for a path into one of ``runc_own``, that mount's path (mode 0).
    A path is on this machine under the deepest of ``roots`` (container path: host
    directory) it is in. None where runc's open would find nothing."""
    todo = list(reversed(parts))  # taken from the end
    done: list[str] = []
    mode = stat.S_IFDIR  # the root's
    links = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        done.append(part)
        where = "/" + "/".join(done)
        if where in runc_own:
            # runc's /dev/null (a symlink to it says "no table"): read, it is empty.
            if where == "/dev" and [p for p in reversed(todo) if p not in ("", ".")] == ["null"]:
                return 0, DEV_NULL
            return 0, where
        top, rest = _under(roots, done)
        host = top.joinpath(*rest)
        try:
            mode = os.lstat(host).st_mode
            target = os.readlink(host) if stat.S_ISLNK(mode) else None
        except OSError:
            return None  # not there, or a file before the end (ENOTDIR)
        if target is not None:
            links += 1
            if links > _MAX_LINKS:
                return None
            done = [] if target.startswith("/") else done[:-1]
            mode = stat.S_IFDIR  # where the link is, until its target's first part
            todo.extend(reversed(target.split("/")))
        elif todo and not stat.S_ISDIR(mode):
            return None  # a file with more path after it: ENOTDIR
    return mode, "/" + "/".join(done)


def _id(text: str) -> int | None:
    """``text`` as a uid or gid: ASCII digits up to 2**32 - 2 (``str.isdigit`` takes ``²``)."""
    if _ID.fullmatch(text) is None or int(text) > MAX_ID:
        return None
    return int(text)


def _read_table(rootfs: Path, etc: Path | None, name: str) -> list[list[str]]:
    """Read the colon table ``name`` of the container's /etc (``etc``, else the rootfs'
    /etc) as runc's open finds it: symlinks followed from the container's root (``_follow``).

    What that found is then opened from the directory it is in (the rootfs,
    or a volume at /etc), one name at a time through no symlink: nothing
    that changed since leads out of the container, and a symlink there that
    ``_follow`` did not see is no table. Only a regular file is read: the
    image may put a FIFO there (the read would never end) or a device node
    (opened on the host, as root, outside any container's device rules);
    none, a loop, runc's own filesystems (``RUNC_OWN``: not the image's), or
    anything else, is an empty table, as is a missing ``etc``. One longer
    than ``MAX_TABLE`` is a BadImage, as is a read that fails.
    """
    shown = f"/etc/{name}"  # as the container has it, wherever it was found
    roots, base = _roots(rootfs, etc)
    found = _follow(roots, [*base, name], RUNC_OWN)
    # Mode 0 for runc's own mounts: not regular either.
    if found is None or not stat.S_ISREG(found[0]):
        return []
    top, rest = _under(roots, found[1].split("/")[1:])
    fd = -1
    try:
        fd = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for at, part in enumerate(rest, 1):
            # O_PATH: nothing is opened but the name, whatever the image made it.
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            nxt = os.open(part, flags | (os.O_DIRECTORY if at < len(rest) else 0), dir_fd=fd)
            os.close(fd)
            fd = nxt
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError as error:
        if fd >= 0:
            os.close(fd)
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return []  # gone, or a symlink now: no table
        raise BadImage(f"cannot read the image's {shown}: {error.strerror}") from None
    try:
        if not regular:
            return []
        with open(f"/proc/self/fd/{fd}", "rb") as table:  # that inode, readable
            data = table.read(MAX_TABLE + 1)
    except OSError as error:  # /proc missing too: never an empty table in silence
        raise BadImage(f"cannot read the image's {shown}: {error}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TABLE:
        raise BadImage(f"the image's {shown} is larger than {MAX_TABLE} bytes")
    # As runc reads them: each line trimmed (a CRLF file's rows match), blank ones skipped.
    lines = (line.strip() for line in data.decode("utf-8", "replace").split("\n"))
    return [line.split(":") for line in lines if line and not line.startswith("#")]
