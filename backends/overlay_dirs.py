"""Directory attributes an overlay of independently extracted layers gets wrong.

overlayfs shows a directory with the attributes (mode, owner, mtime, xattrs)
of the topmost layer holding it.  A layer that writes ``etc/passwd`` without
an ``etc/`` header of its own makes ``etc`` itself, with default attributes,
when extracted alone; in the image's union (what ``umoci unpack`` and the
copy backend give) ``etc`` keeps the attributes of the layer below that had
the header.  ``plan_top_dirs`` finds such directories from the layers'
``implicit`` lists and says what they should look like; ``write_top_dirs``
makes them in a directory stacked above the layers (the rootfs' upper
directory, or an extra read-only lower), where the kernel takes their
attributes without hiding anything below.

The layer trees are read without following any symlink in them: each
component is opened with ``O_NOFOLLOW``.  Pure reads, blocking.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.apply_tree import OVERLAY_OPAQUE, OVERLAY_XATTR_PREFIX
from providers.errors import BackendError
from providers.layer_rules import RelPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class LowerDir:
    """One extracted layer in overlay form and the directories it made on its own."""

    path: Path
    implicit: frozenset[RelPath]


@dataclass(frozen=True)
class DirAttrs:
    path: RelPath
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]


def plan_top_dirs(lowers: Sequence[LowerDir]) -> list[DirAttrs]:
    """The directories to stack above ``lowers`` (bottom first), root included.

    The root takes the top layer's root attributes (the stacked directory's
    own would show otherwise); every directory whose topmost holder made it
    without a header takes those of the nearest lower layer with a header,
    and so do the ancestors it needs, each with its union attributes.
    Parents come before children.
    """
    top = list(reversed(lowers))
    wanted: dict[RelPath, DirAttrs] = {}
    wanted[()] = _root_attrs(top[0].path)
    for path in sorted({p for lower in lowers for p in lower.implicit}):
        found = _union_attrs(top, path)
        if found is None or not found[1]:
            continue  # not a directory in the union, or already right
        for end in range(1, len(path)):
            ancestor = path[:end]
            if ancestor not in wanted:
                above = _union_attrs(top, ancestor)
                assert above is not None  # a directory's parents are directories
                wanted[ancestor] = above[0]
        wanted[path] = found[0]
    return [wanted[p] for p in sorted(wanted, key=lambda p: (len(p), p))]


def _union_attrs(top: Sequence[LowerDir], path: RelPath) -> tuple[DirAttrs, bool] | None:
    """The union's attributes of directory ``path`` and whether overlay shows others.

    None when ``path`` is no directory in the union.  ``top`` is top first.
    Raises BackendError when a layer writes into a directory it has no header
    for whose lower namesake is no directory: applied in order, the layer
    would go through a lower symlink (or fail on a file); stacked, its
    directory would hide the symlink.
    """
    shown: DirAttrs | None = None
    below: Path | None = None  # the layer of an implicit directory, while looking below it
    for lower in top:
        found = _lookup(lower.path, path)
        if found is None:
            continue
        if found.kind == "other" and below is not None:
            name = "/".join(path)
            raise BackendError(
                f"layer {below.parent.name} writes into {name!r} without a header while a "
                f"lower layer has {name!r} as no directory; overlay cannot show that union"
            )
        if found.attrs is None:
            break  # hidden below, or a non-directory that ends the union
        if shown is None:
            shown = found.attrs
        if path not in lower.implicit:
            return found.attrs, found.attrs != shown
        if found.parent_opaque:
            break
        below = lower.path
    if shown is None:
        return None
    return shown, False


@dataclass(frozen=True)
class _Found:
    """What one layer holds at a path: a directory (its attributes), a whiteout,
    another kind of file, or (``hidden``) nothing but a hiding ancestor."""

    kind: str
    attrs: DirAttrs | None = None
    parent_opaque: bool = False


def _lookup(root: Path, path: RelPath) -> _Found | None:
    """``path`` in one layer tree; None when the layer has nothing there (look lower)."""
    with _opened(root, path[:-1]) as (fd, opaque):
        if fd is None:
            return _Found("hidden") if opaque else None
        if not path:
            return _Found("dir", _from_fd(fd, ()))
        try:
            st = os.stat(path[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return _Found("hidden") if opaque else None
        if not stat.S_ISDIR(st.st_mode):
            whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            return _Found("whiteout" if whiteout else "other")
        child = os.open(path[-1], _DIR_FLAGS, dir_fd=fd)
        try:
            return _Found("dir", _from_fd(child, path), opaque)
        finally:
            os.close(child)


@contextlib.contextmanager
def _opened(root: Path, parents: RelPath) -> Iterator[tuple[int | None, bool]]:
    """The directory ``parents`` in ``root`` (None if missing) and whether any is opaque.

    A non-directory on the way hides everything below it: reported as a
    missing directory that is opaque.
    """
    fd = os.open(root, _DIR_FLAGS)
    opaque = False
    try:
        for part in parents:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                yield None, opaque
                return
            except OSError as error:
                if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                yield None, True
                return
            os.close(fd)
            fd = child
            opaque = opaque or _is_opaque(fd)
        yield fd, opaque
    finally:
        os.close(fd)


def _is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OVERLAY_OPAQUE) == b"y"
    except OSError:
        return False


def _root_attrs(root: Path) -> DirAttrs:
    fd = os.open(root, _DIR_FLAGS)
    try:
        return _from_fd(fd, ())
    finally:
        os.close(fd)


def _from_fd(fd: int, path: RelPath) -> DirAttrs:
    st = os.fstat(fd)
    xattrs = tuple(
        sorted(
            (name, os.getxattr(fd, name))
            for name in os.listxattr(fd)
            if not name.startswith(OVERLAY_XATTR_PREFIX)
        )
    )
    return DirAttrs(path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, xattrs)


def write_top_dirs(top: Path, dirs: Sequence[DirAttrs]) -> None:
    """Make ``dirs`` (parents first, root first) in the existing directory ``top``."""
    made: list[tuple[int, DirAttrs]] = []
    try:
        for attrs in dirs:
            if attrs.path:
                parent = os.path.join(top, *attrs.path[:-1])
                os.mkdir(os.path.join(parent, attrs.path[-1]), 0o700)
            fd = os.open(os.path.join(top, *attrs.path), _DIR_FLAGS)
            made.append((fd, attrs))
            os.fchown(fd, attrs.uid, attrs.gid)
            os.fchmod(fd, attrs.mode)  # after chown, which clears setgid
            for name, value in attrs.xattrs:
                with contextlib.suppress(OSError):  # what the layer itself could not keep
                    os.setxattr(fd, name, value)
        # Children change their parent's mtime: set times deepest first.
        for fd, attrs in reversed(made):
            os.utime(fd, ns=(attrs.mtime_ns, attrs.mtime_ns))
    finally:
        for fd, _ in made:
            os.close(fd)
