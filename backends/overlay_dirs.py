"""What an overlay of independently extracted layers gets wrong, and its repair.

overlayfs shows a directory with the attributes (mode, owner, mtime, xattrs)
of the topmost layer holding it.  A layer that writes ``etc/passwd`` without
an ``etc/`` header of its own makes ``etc`` itself, with default attributes,
when extracted alone; in the image's union (what ``umoci unpack`` and the
copy backend give) ``etc`` keeps the attributes of the layer below that had
the header, and so does the root of a layer without a ``./`` entry.  A layer
that whites out ``a/b`` makes ``a`` to hold the whiteout; where no lower
layer has a directory ``a``, the union has none either, and overlayfs would
list a phantom ``a`` and, in it, a whiteout no lookup finds.  It lists
whiteouts in any directory that no other layer has, so such a directory is
stacked again, which makes it one overlayfs merges.

``plan_top_dirs`` finds both from the layers' ``MadeDirs`` and says what
the union should look like: directories with their union attributes, and
whiteouts over phantoms; ``write_top_dirs`` makes them in a directory stacked
above the layers (the rootfs' upper directory, or an extra read-only lower),
where the kernel takes their attributes without hiding anything else.  A
layer whose root is opaque hides every lower layer: ``first_mounted`` says
which layers the mount needs, and the plan still reads the hidden ones for
the directories that marker spared (``MadeDirs.kept``).  The plan refuses,
with a ``BackendError``, a layer that went through a lower non-directory.
``union_kind`` says what the union shows at a path, for a hardlink a layer
alone cannot make.

The layer trees are read without following any symlink in them: each
component is opened with ``O_NOFOLLOW``.  Pure reads, blocking.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.apply_tree import OVERLAY_OPAQUE, OVERLAY_XATTR_PREFIX, MadeDirs
from providers.errors import BackendError
from providers.layer_rules import RelPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class LowerDir:
    """One extracted layer in overlay form and the directories it made on its own."""

    path: Path
    made: MadeDirs

    @property
    def implicit(self) -> frozenset[RelPath]:
        return self.made.implicit

    @functools.cached_property
    def root_opaque(self) -> bool:
        fd = os.open(self.path, _DIR_FLAGS)
        try:
            return _is_opaque(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class TopPlan:
    """What to make above the layers: directories (parents first) and whiteouts."""

    dirs: list[DirAttrs]
    whiteouts: list[RelPath]


def first_mounted(lowers: Sequence[LowerDir]) -> int:
    """The index of the lowest of ``lowers`` (bottom first) the mount needs.

    Those below a layer with an opaque root are hidden whole; overlayfs
    itself does not take the opaque marker of a layer's root.
    """
    for index in range(len(lowers) - 1, 0, -1):
        if lowers[index].root_opaque:
            return index
    return 0


@dataclass(frozen=True)
class DirAttrs:
    path: RelPath
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]


def plan_top_dirs(lowers: Sequence[LowerDir]) -> TopPlan:
    """What to stack above ``lowers`` (bottom first): directories, root included, and whiteouts.

    The root takes the topmost ``./`` header's attributes, or the top root's
    (the stacked directory's own would show otherwise); every directory
    whose topmost holder made it without a header takes those of the
    nearest lower layer with one, and so do the ancestors it needs, each
    with its union attributes.  A directory only layers that made it for
    markers alone hold is whited out; a directory holding whiteouts is
    stacked too, so that overlayfs merges it and does not list them.
    Parents come before children.
    """
    top = list(reversed(lowers))
    for index, lower in enumerate(lowers):
        _check_walked_dirs(lower, top[len(lowers) - index :])
    wanted: dict[RelPath, DirAttrs] = {}
    wanted[()] = _root_attrs(top)
    phantoms: list[RelPath] = []
    for path in sorted({p for lower in lowers for p in lower.made.marker_only}):
        if not any(path[: len(p)] == p for p in phantoms) and _phantom(top, path):
            phantoms.append(path)
    for path in sorted({p for lower in lowers for p in lower.implicit}):
        if any(path[: len(p)] == p for p in phantoms):
            continue
        found = _union_attrs(top, path)
        if found is None or not found[1]:
            continue  # not a directory in the union, or already right
        _want(top, wanted, path[:-1])
        wanted[path] = found[0]
    for path in phantoms:
        _want(top, wanted, path[:-1])
    for path in sorted({p for lower in lowers for p in lower.made.whiteout_dirs}):
        # Stacked here too, the directory is a merged one, whose listing
        # leaves whiteouts out.
        if not any(path[: len(p)] == p for p in phantoms) and _union_attrs(top, path):
            _want(top, wanted, path)
    dirs = [wanted[p] for p in sorted(wanted, key=lambda p: (len(p), p))]
    return TopPlan(dirs, phantoms)


def _check_walked_dirs(lower: LowerDir, below: Sequence[LowerDir]) -> None:
    """Refuse a layer that went through a lower non-directory: a union cannot show that.

    Applied in order, its entries went where a lower symlink led, or failed
    on a lower file; extracted alone, the layer made a directory there, which
    hides the symlink or file when stacked, or which a later entry of the
    layer replaced, taking the entries' trace with it.  ``below`` is top first.
    """
    for path in sorted(lower.made.walked):
        if union_kind(below, path) in ("other", "unknown"):
            name = "/".join(path)
            raise BackendError(
                f"layer {lower.path.parent.name} writes into {name!r} without a header while a "
                f"lower layer has {name!r} as no directory; overlay cannot show that union"
            )


def _want(top: Sequence[LowerDir], wanted: dict[RelPath, DirAttrs], path: RelPath) -> None:
    """Plan ``path`` and its ancestors with their union attributes."""
    for end in range(1, len(path) + 1):
        ancestor = path[:end]
        if ancestor not in wanted:
            above = _union_attrs(top, ancestor)
            assert above is not None  # a directory's parents are directories
            wanted[ancestor] = above[0]


def _phantom(top: Sequence[LowerDir], path: RelPath) -> bool:
    """Whether directory ``path`` is in the union only by layers that made it for markers.

    Raises BackendError when such a layer's directory would hide a lower
    non-directory: applied in order, its markers would do nothing there
    (or go through a lower symlink); stacked, the directory hides it.
    """
    holder: Path | None = None
    for lower in top:
        found = _lookup(lower.path, path)
        if found is not None:
            if found.kind == "other" and holder is not None:
                name = "/".join(path)
                raise BackendError(
                    f"layer {holder.parent.name} has markers in {name!r} while a lower layer "
                    f"has {name!r} as no directory; overlay cannot show that union"
                )
            if found.kind != "dir":
                break  # hidden below, or a non-directory that ends the union
            if path not in lower.made.marker_only:
                return False
            holder = lower.path
            if found.parent_opaque:
                break  # an opaque ancestor hides lower namesakes; its own opacity does not
        if lower.root_opaque:
            break
    return holder is not None


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
        if found is not None:
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
            if found.parent_opaque and path not in lower.made.kept:
                break
            below = lower.path
        if lower.root_opaque and path not in lower.made.kept:
            break
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
    opaque: bool = False


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
            return _Found("dir", _from_fd(child, path), opaque, _is_opaque(child))
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


def _root_attrs(top: Sequence[LowerDir]) -> DirAttrs:
    """The root's of the topmost layer with a ``./`` header, else the top one's (top first)."""
    # An opaque root hides the lower children, not the lower root's attributes.  None: an
    # older lazyfs extracted the layer without recording it.  Taken as a header, its root
    # is used as that lazyfs used the top one's, and a "./" it had is never passed over.
    holder = next((lower for lower in top if lower.made.root_header is not False), top[0])
    fd = os.open(holder.path, _DIR_FLAGS)
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


def write_top_dirs(top: Path, plan: TopPlan) -> None:
    """Make ``plan`` (directories parents first, root first, then whiteouts) in ``top``.

    ``top`` exists and is empty; the paths in the plan come from layer trees
    read without following symlinks, and ``top`` is ours alone.
    """
    made: list[tuple[int, DirAttrs]] = []
    try:
        for attrs in plan.dirs:
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
        for path in plan.whiteouts:
            os.mknod(os.path.join(top, *path), stat.S_IFCHR, os.makedev(0, 0))
        # Children change their parent's mtime: set times deepest first.
        for fd, attrs in reversed(made):
            os.utime(fd, ns=(attrs.mtime_ns, attrs.mtime_ns))
    finally:
        for fd, _ in made:
            os.close(fd)


def union_kind(top: Sequence[LowerDir], path: RelPath) -> str:
    """What the union of ``top`` (top first) shows at ``path``, without following it.

    "missing", "dir", "other" (any other kind, a symlink too), or "unknown"
    when a symlink on the way leaves the answer to a path walk of the
    mounted union.
    """
    for lower in top:
        kind = _kind_in(lower.path, path)
        if kind == "symlink":
            return "unknown"
        if kind == "hidden":
            return "missing"
        if kind != "absent":
            return kind
        if lower.root_opaque:
            break
    return "missing"


def _kind_in(root: Path, path: RelPath) -> str:
    """``path`` in one layer tree: absent, hidden, symlink (on the way), dir or other."""
    fd = os.open(root, _DIR_FLAGS)
    opaque = False
    try:
        for part in path[:-1]:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return "hidden" if opaque else "absent"
            except OSError as error:
                if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                found = os.stat(part, dir_fd=fd, follow_symlinks=False)
                return "symlink" if stat.S_ISLNK(found.st_mode) else "hidden"
            os.close(fd)
            fd = child
            opaque = opaque or _is_opaque(fd)
        try:
            found = os.stat(path[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return "hidden" if opaque else "absent"
        if stat.S_ISCHR(found.st_mode) and found.st_rdev == 0:
            return "hidden"
        return "dir" if stat.S_ISDIR(found.st_mode) else "other"
    finally:
        os.close(fd)
