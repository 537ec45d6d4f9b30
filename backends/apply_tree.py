"""The rootfs a layer is applied to, reached only through directory descriptors.

``Tree`` is ``backends.apply``'s view of the directory being written: every
filesystem call goes through directory descriptors (the walk itself is
``backends.apply_walk``), so neither the archive nor a concurrent process
can redirect a write outside the root.  It makes, replaces and removes
entries, applies whiteouts and opaque markers (or writes them in overlayfs'
form), keeps what a union of layers in overlay form must know about the
directories a layer made (``MadeDirs``), and sets directory modes and times
once the layer is in (as a user, the modes of those it widened to write in
too).  What an entry means is decided before it gets here; see
``backends.apply``.  Blocking.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from backends.apply_walk import DIR_FLAGS, DirWalker
from providers.errors import BackendError
from providers.fstree import remove_at
from providers.layer_entry import link_into_itself, link_to_directory, no_link_source
from providers.layer_rules import RelPath

log = logging.getLogger(__name__)

OVERLAY_XATTR_PREFIX = "trusted.overlay."
OVERLAY_OPAQUE = "trusted.overlay.opaque"

T = TypeVar("T")


@dataclass(frozen=True)
class MadeDirs:
    """Directories a layer made without a header, for a union of layers in overlay form.

    ``implicit``: all of them; in a union they take the attributes of the
    nearest lower layer that has a header for them.  ``marker_only``: those
    that hold nothing but whiteouts and opaque markers; where no lower layer
    has them as directories, they are not part of the union.  ``kept``:
    those made before an opaque marker (or a whiteout of their own
    directory) above them: that marker does not hide their lower namesakes'
    attributes.  ``whiteout_dirs``: the directories holding the whiteouts it
    made (any of them, header or not): where no other layer has them, the
    kernel would list those whiteouts.  ``walked``: every directory it made
    for something below where a lower namesake still showed through,
    whatever became of it later in the layer, and every missing path a walk
    went through lexically there (``layer_rules.past_missing``): where a
    lower layer has a non-directory there, the layer went through (or into)
    it, which a union cannot show.  ``root_header``: whether the layer has a
    ``./`` entry; without one its root is the extractor's own, and the
    union's root is that of the nearest lower layer with one.  None where it
    is not known (a layer an older lazyfs extracted).
    """

    implicit: frozenset[RelPath] = frozenset()
    marker_only: frozenset[RelPath] = frozenset()
    kept: frozenset[RelPath] = frozenset()
    whiteout_dirs: frozenset[RelPath] = frozenset()
    walked: frozenset[RelPath] = frozenset()
    root_header: bool | None = None


class Tree(DirWalker):
    """The rootfs being written, reached only through directory descriptors.

    Remembers, for one layer, which resolved paths the layer made (so its
    whiteouts spare them) and which directories get their mode and mtime at
    the end.  Any removal empties the walk's descriptor cache.
    """

    def __init__(self, root: Path, layer: str, *, overlay: bool = False) -> None:
        super().__init__(root, layer)
        self.overlay = overlay
        # Overlay mode: whiteout devices this layer made.  Both modes:
        # directories made for entries below them, without a header.
        self._whiteouts: set[RelPath] = set()
        self._implicit: set[RelPath] = set()
        # Overlay mode: implicit directories below a directory the layer then
        # hid the lower children of (see MadeDirs.kept).
        self._kept: set[RelPath] = set()
        # Overlay mode: directories it made opaque.
        self._opaque: set[RelPath] = set()
        self._own_attrs: set[RelPath] = set()  # implicit ones a marker cut off from below
        # Paths it made implicit directories at, or went through lexically,
        # where a lower namesake showed through, then (see MadeDirs.walked).
        self._walked: set[RelPath] = set()
        self._gone: set[RelPath] = set()  # implicit ones the layer removed again
        self.skipped: Counter[str] = Counter()
        self.skipped_paths: set[RelPath] = set()
        self._created: set[RelPath] = set()
        self._ancestors: set[RelPath] = set()  # strict ancestors of _created
        self._holding: set[RelPath] = set()  # strict ancestors of the entries written
        self._dirs: dict[RelPath, tuple[int, int]] = {}

    def mark_created(self, path: RelPath, *, entry: bool = True) -> None:
        """Record that the layer made ``path``: an entry, or (not ``entry``) a directory for one."""
        self._created.add(path)
        if entry:
            self._holding.update(path[:end] for end in range(len(path)))
        for end in range(len(path) - 1, -1, -1):
            if path[:end] in self._ancestors:
                break
            self._ancestors.add(path[:end])

    def defer_dir(self, path: RelPath, mode: int, mtime_ns: int) -> None:
        self._dirs[path] = (mode, mtime_ns)

    def make_missing(self, parent_fd: int, path: RelPath) -> int:
        return self._implicit_dir(parent_fd, path)

    def passed_missing(self, path: RelPath) -> None:
        if not self._below_opaque(path):
            self._walked.add(path)

    def _below_opaque(self, path: RelPath) -> bool:
        """Whether no lower namesake of ``path`` shows through: it is below an opaque one."""
        return any(path[:end] in self._opaque for end in range(len(path)))

    def replace_non_dir(self, parent_fd: int, path: RelPath) -> int | None:
        if path in self._whiteouts and _is_whiteout(parent_fd, path[-1]):
            # The layer hid a lower NAME and puts things in NAME: a fresh,
            # opaque directory is what that means to overlayfs.
            os.unlink(path[-1], dir_fd=parent_fd)
            self.invalidate()
            return self._implicit_dir(parent_fd, path)
        return None

    def _implicit_dir(self, parent_fd: int, path: RelPath) -> int:
        """Make the missing directory ``path`` for an entry below it."""
        os.mkdir(path[-1], 0o755, dir_fd=parent_fd)
        child = os.open(path[-1], DIR_FLAGS, dir_fd=parent_fd)
        os.fchmod(child, 0o755)  # whatever the umask
        # Made without a header: mtime 0 at the end, as the merged FUSE tree
        # shows it, not whenever this extraction ran.
        self._found_times[path] = (0, 0)
        self.mark_created(path, entry=False)
        if path in self._whiteouts:
            # Fresh over a hidden namesake: its own attributes are the union's.
            self._whiteouts.discard(path)
            self._set_opaque(child, path)
        else:
            self._implicit.add(path)
            self._gone.discard(path)
            if self._below_opaque(path):
                self._own_attrs.add(path)
            else:
                self._walked.add(path)
        return child

    def made_dirs(self) -> MadeDirs:
        implicit = frozenset(self._implicit - self._gone - self._dirs.keys())
        return MadeDirs(
            implicit,
            frozenset(implicit - self._holding),
            frozenset(self._kept & implicit),
            frozenset(path[:-1] for path in self._whiteouts if len(path) > 1),
            frozenset(self._walked),
            () in self._dirs,
        )

    def create(self, parent_fd: int, path: RelPath, make: Callable[[], T]) -> T:
        """``make()`` the entry at resolved ``path`` (in ``parent_fd``), replacing what is there."""
        try:
            return make()
        except FileExistsError:
            self._remove(parent_fd, path[-1])
            self._removed(path)
            return make()

    def _removed(self, path: RelPath) -> None:
        """Forget what the layer made at and below ``path``, which it removed again.

        A directory it makes there later is a new one: no header of the
        old one gives it attributes.  ``walked`` keeps the old ways.
        """
        for gone in [p for p in self._dirs if p[: len(path)] == path]:
            del self._dirs[gone]
        self._gone.update(p for p in self._implicit if p[: len(path)] == path)
        self._whiteouts.difference_update([p for p in self._whiteouts if p[: len(path)] == path])

    def _remove(self, parent_fd: int, name: str) -> None:
        self.invalidate()
        remove_at(parent_fd, name, name)  # a lower layer's tree may be deeper than the stack

    def make_dir(self, path: RelPath, parent_fd: int, resolved: RelPath) -> tuple[int, bool]:
        """The directory at ``path`` (made, or kept if one is there) and whether it was there."""
        hit = self.cached(path)
        if hit is not None and hit[1] == resolved:
            return hit[0], True
        name = resolved[-1]
        existed = replaced = False
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
        except FileExistsError:
            if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                existed = True
            else:
                self._remove(parent_fd, name)
                os.mkdir(name, 0o755, dir_fd=parent_fd)
                replaced = True
        fd = self.open_dir(name, parent_fd, resolved)
        if replaced:
            # What went may have been a symlink ``path`` itself went through
            # ("b/b" over "b -> ."): ``path`` leads elsewhere now, so it is not
            # cached; the descriptor lives until the entry is done.
            self.retire(fd)
        else:
            self.cache(path, (fd, resolved))
        if resolved in self._whiteouts or (replaced and self.overlay):
            # Overlay mode: the layer's own whiteout, or its own non-directory,
            # hid the lower namesake; its own directory there is an opaque one.
            self._whiteouts.discard(resolved)
            self._set_opaque(fd, resolved)
        return fd, existed

    def hardlink(self, target: RelPath, parent_fd: int, resolved: RelPath, entry: str) -> None:
        found = self.walk(target[:-1], entry, create=False)
        source = "/".join(target)
        if found is None:
            raise self._no_link_source(entry, source)
        source_dir, source_parent = found
        source_name = target[-1]
        try:
            mode = os.stat(source_name, dir_fd=source_dir, follow_symlinks=False).st_mode
        except FileNotFoundError:
            if (*source_parent, source_name) in self.skipped_paths:
                return
            raise self._no_link_source(entry, source) from None
        if stat.S_ISDIR(mode):
            if self.overlay and (*source_parent, source_name) in self.made_dirs().marker_only:
                # Made for markers only: what the union has there is below.
                raise LinkOutsideLayer(self.layer, entry, source)
            raise link_to_directory(self.layer, entry, source)
        if (*source_parent, source_name) in self._whiteouts and _is_whiteout(
            source_dir, source_name
        ):
            # Overlay form: the layer hid the source; a link would be one more whiteout.
            raise no_link_source(self.layer, entry, source)
        if (*source_parent, source_name) == resolved:
            return
        if (*source_parent, source_name)[: len(resolved)] == resolved:
            raise link_into_itself(self.layer, entry, source)
        name = resolved[-1]
        self.create(
            parent_fd,
            resolved,
            lambda: os.link(
                source_name,
                name,
                src_dir_fd=source_dir,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            ),
        )

    def _no_link_source(self, entry: str, source: str) -> Exception:
        if self.overlay:
            # It may be in a lower layer: fine in a union, impossible in one layer alone.
            return LinkOutsideLayer(self.layer, entry, source)
        return no_link_source(self.layer, entry, source)

    def whiteout(self, path: RelPath, entry: str) -> None:
        if self.overlay:
            self._overlay_whiteout(path, entry)
            return
        found = self.walk(path[:-1], entry, create=False)
        if found is not None:
            self._hide(found[0], path[-1], (*found[1], path[-1]))

    def _overlay_whiteout(self, path: RelPath, entry: str) -> None:
        if not self.privileged:
            raise BackendError(f"layer {self.layer}: entry {entry!r}: whiteouts need root")
        found = self.walk(path[:-1], entry, create=True, marker=True)
        if found is None:
            return  # under something of the layer's own that is no directory
        parent_fd, parent = found
        name = path[-1]
        resolved = (*parent, name)
        try:
            mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            mode = None
        own = resolved in self._dirs or resolved in self._holding
        if mode is not None and stat.S_ISDIR(mode) and not own:
            # Made for earlier markers only: nothing of the layer's own in it.
            self._remove(parent_fd, name)
            self._removed(resolved)
            mode = None
        if mode is None:
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent_fd)
            self._whiteouts.add(resolved)
            return
        if stat.S_ISDIR(mode):
            # The layer's own directory: it keeps its entries, loses the lower ones.
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
            try:
                self._make_opaque(fd, resolved)
            finally:
                os.close(fd)
        # Any other entry of the layer hides its lower namesake by itself.

    def _make_opaque(self, fd: int, path: RelPath) -> None:
        self._set_opaque(fd, path)
        # Directories the layer made below for its entries before this marker,
        # where a lower namesake still showed, keep the attributes it gave them.
        depth = len(path)
        below = {p for p in self._implicit if len(p) > depth and p[:depth] == path}
        self._kept.update((below & self._holding) - self._own_attrs)
        # The others go, as far as lower layers are concerned: when the layer
        # writes into them later, they are its own.
        self._own_attrs.update(below - self._holding)

    def _set_opaque(self, fd: int, path: RelPath) -> None:
        set_opaque(fd)
        self._opaque.add(path)

    def opaque(self, path: RelPath, entry: str) -> None:
        if self.overlay:
            made = self.walk(path, entry, create=True, marker=True)
            if made is not None:
                self._make_opaque(*made)
            return
        found = self.walk(path, entry, create=False)
        if found is not None:
            for child in os.listdir(found[0]):
                self._hide(found[0], child, (*found[1], child))

    def _hide(self, parent_fd: int, name: str, path: RelPath) -> None:
        """Remove what lower layers made at ``path``, keeping what this layer made.

        With no recursion and one descriptor: this layer's own directories may go deeper
        than the stack and the open-file limit. Up by ``..``: nothing else moves them.
        """
        here = os.dup(parent_fd)
        levels: list[tuple[list[str], RelPath]] = [([name], path[:-1])]
        try:
            while levels:
                names, where = levels[-1]  # the names left to look at there, and its path
                if not names:
                    levels.pop()
                    if levels:
                        here, old = os.open("..", DIR_FLAGS, dir_fd=here), here
                        os.close(old)
                    continue
                child = names.pop()
                at = (*where, child)
                try:
                    mode = os.stat(child, dir_fd=here, follow_symlinks=False).st_mode
                except FileNotFoundError:
                    continue
                if at not in self._created and at not in self._ancestors:
                    self.remember(here, where)  # before the removal changes its time
                    self._remove(here, child)
                elif stat.S_ISDIR(mode):  # ours, or holding ours: its lower children go
                    here, old = self.open_dir(child, here, at), here
                    os.close(old)
                    levels.append((os.listdir(here), at))
        finally:
            os.close(here)

    def finish(self) -> None:
        """Set the deferred directory modes and mtimes; log what was skipped."""
        self.set_dir_times(self._dirs)
        for what, count in sorted(self.skipped.items()):
            log.warning("layer %s: skipped %d %s", self.layer, count, what)


class LinkOutsideLayer(BackendError):
    """A hardlink of a layer extracted alone (overlay form) to a path not in that layer.

    Whether it exists in the image is the union's question: the overlay
    backend answers it, with ``no_link_source`` if it does not.
    """

    def __init__(self, layer: str, entry: str, source: str) -> None:
        super().__init__(
            f"layer {layer}: entry {entry!r} is a hardlink to {source!r}, which is not in its "
            "own layer; the overlay backend cannot make it (use copy)"
        )
        self.layer = layer
        self.entry = entry
        self.source = source


def set_opaque(fd: int) -> None:
    os.setxattr(fd, OVERLAY_OPAQUE, b"y")


def _is_whiteout(dir_fd: int, name: str) -> bool:
    """Whether ``name`` is still the whiteout the layer made (an entry may have replaced it)."""
    found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return stat.S_ISCHR(found.st_mode) and found.st_rdev == 0
