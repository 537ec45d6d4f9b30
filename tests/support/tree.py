"""Describe a directory tree exactly, to compare rootfs made different ways.

``tree_digest`` records, per relative path, everything a layer can set:
type, full ``st_mode`` (setuid/setgid/sticky included), owner, size and
content hash of files, link targets, device numbers, mtimes to the
nanosecond, xattrs of every namespace root can read, and which paths are
hardlinks of one another. ``diff_trees`` turns two of them into readable
lines for an assertion message.

Directory mtimes are recorded by default: ``umoci unpack`` sets each
directory's mtime from its last tar header, restoring it after later layers
add or remove children (checked by this project's integration tests), so a
backend can match it. The root itself is left out: umoci gives it mtime 0,
and a backend's mount point is not part of the image.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


class Node(NamedTuple):
    """One entry of a tree; fields that do not apply to its kind are None."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int | None
    sha256: str | None
    target: str | None
    rdev: tuple[int, int] | None
    mtime_ns: int | None
    xattrs: tuple[tuple[str, bytes], ...]
    hardlinks: tuple[str, ...]

    def describe(self) -> str:
        fields = [self.kind, oct(self.mode), f"{self.uid}:{self.gid}"]
        if self.size is not None:
            fields.append(f"size={self.size}")
        if self.target is not None:
            fields.append(f"-> {self.target}")
        return " ".join(fields)


_NO_XATTR_SUPPORT = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


def _xattrs(path: str, ignore: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as error:
        # Filesystems without xattr support (and some special files) have none.
        if error.errno in _NO_XATTR_SUPPORT:
            return ()
        raise
    pairs = []
    for name in names:
        if name.startswith(ignore):
            continue
        try:
            pairs.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError as error:
            if error.errno != errno.ENODATA:  # removed since it was listed
                raise
    return tuple(sorted(pairs))


def _sha256(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _walk(root: str, rel: str = "") -> Iterable[tuple[str, os.DirEntry[str]]]:
    with os.scandir(os.path.join(root, rel) if rel else root) as entries:
        children = sorted(entries, key=lambda e: e.name)
    for entry in children:
        path = f"{rel}/{entry.name}" if rel else entry.name
        yield path, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(root, path)


def tree_digest(
    root: Path, *, dir_mtimes: bool = True, ignore_xattrs: Iterable[str] = ()
) -> dict[str, Node]:
    """Every entry below ``root`` by relative path (``a/b``), root excluded.

    ``ignore_xattrs`` are name prefixes to leave out, for xattrs a filesystem
    adds by itself (``security.selinux``). Hardlinks are grouped by inode
    among the paths of this tree only.
    """
    ignore = tuple(ignore_xattrs)
    stats: dict[str, os.stat_result] = {}
    for rel, entry in _walk(str(root)):
        stats[rel] = entry.stat(follow_symlinks=False)
    by_inode: dict[tuple[int, int], list[str]] = {}
    for rel, st in stats.items():
        if not stat.S_ISDIR(st.st_mode):
            by_inode.setdefault((st.st_dev, st.st_ino), []).append(rel)
    nodes: dict[str, Node] = {}
    for rel, st in stats.items():
        path = os.path.join(root, rel)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "unknown")
        group = by_inode.get((st.st_dev, st.st_ino), [])
        nodes[rel] = Node(
            kind=kind,
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind in ("file", "symlink") else None,
            sha256=_sha256(path) if kind == "file" else None,
            target=os.readlink(path) if kind == "symlink" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))
            if kind in ("char", "block")
            else None,
            mtime_ns=st.st_mtime_ns if kind != "dir" or dir_mtimes else None,
            xattrs=_xattrs(path, ignore),
            hardlinks=tuple(sorted(group)) if len(group) > 1 else (),
        )
    return nodes


def diff_trees(a: Mapping[str, Node], b: Mapping[str, Node]) -> list[str]:
    """Human-readable differences between two ``tree_digest`` results, ``a`` vs ``b``."""
    lines: list[str] = []
    for path in sorted(a.keys() | b.keys()):
        left, right = a.get(path), b.get(path)
        if right is None and left is not None:
            lines.append(f"{path}: only in a ({left.describe()})")
        elif left is None and right is not None:
            lines.append(f"{path}: only in b ({right.describe()})")
        elif left is not None and right is not None and left != right:
            for name in Node._fields:
                x, y = getattr(left, name), getattr(right, name)
                if x != y:
                    if name == "mode":
                        x, y = oct(x), oct(y)
                    lines.append(f"{path}: {name} {x!r} != {y!r}")
    return lines


def is_whiteout(path: Path) -> bool:
    """Whether ``path`` is an overlayfs whiteout: a 0/0 character device."""
    found = path.lstat()
    return stat.S_ISCHR(found.st_mode) and found.st_rdev == os.makedev(0, 0)
