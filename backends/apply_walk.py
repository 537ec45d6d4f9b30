"""Directories of a rootfs reached only through descriptors, one component at a time.

``DirWalker`` is how ``backends.apply_tree`` finds the directory an entry
goes in: every component is opened with ``O_NOFOLLOW`` relative to its
parent's descriptor, so neither the archive nor a concurrent process can
redirect a walk outside the root.  Symlinks on the way are followed inside
the rootfs (an absolute target starts at the root again, a ``..`` above the
root is refused); what follows a missing component is resolved lexically, as
``providers.layer_rules.past_missing`` says (a ``..`` climbs back out of it,
making nothing), and the missing directories a path ends in are made where
the caller asks, by the subclass (``make_missing``), which decides what
making one means.

It caches descriptors of recently used directories and records the times
of each directory as first reached, so that what the layer does to their
children can be undone to their times at the end, when the directories the
layer has headers for take the modes and mtimes the headers give
(``set_dir_times``).

As a user other than root, ``open_dir`` gives the directories it opens rwx
for their owner (``backends.rootless_owners.open_writable``), and
``set_dir_times`` gives them back the mode they had (or their header's);
so, as far as it can, does a layer failing half way.  Blocking.
"""

from __future__ import annotations

import enum
import errno
import heapq
import os
from collections import OrderedDict
from collections.abc import Container, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from backends.rootless_owners import WideDir, Widened, open_writable
from providers import layer_rules as rules
from providers.errors import BackendError, UnsafeLayer, bad_entry
from providers.layer_rules import RelPath

# Tar writers list a tree depth first: the directory being filled and its
# ancestors are what is asked for again.
FD_CACHE_SIZE = 64
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Pins a directory without opening it: needs no permission on it.
_PIN_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Missing(enum.Enum):
    MISSING = enum.auto()


MISSING = _Missing.MISSING  # what a step finds where nothing is


class DirWalker:
    """Walks the directories below ``root`` for one layer, by descriptors only.

    Descriptors are cached by the path as written in the archive; any
    removal must empty the cache (``invalidate``), because a removed
    directory or symlink changes where cached paths lead.  A descriptor
    leaving the cache stays open until ``release``, so the entry in
    progress never sees its descriptors closed under it.
    """

    def __init__(self, root: Path, layer: str) -> None:
        self.layer = layer
        self.privileged = os.geteuid() == 0
        self._widened: Widened = {}  # by open_dir, as a user
        # The caller chose root; following a symlink there is its business.
        self.root_fd = self.open_dir(str(root), None, (), follow=True)
        self._fds: OrderedDict[RelPath, tuple[int, RelPath]] = OrderedDict()
        self._retired: list[int] = []
        # Times of directories as the walk first reached them (atime, mtime).
        self._found_times: dict[RelPath, tuple[int, int]] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is not None and self._widened:
            # The caller may keep what the layer wrote, as it is: not more open than it was.
            self._set_modes({}, strict=False)
        self.invalidate()
        self.release()
        os.close(self.root_fd)

    def release(self) -> None:
        """Close descriptors that left the cache; called between entries."""
        while self._retired:
            os.close(self._retired.pop())

    def invalidate(self) -> None:
        """Forget every cached descriptor: something on the way may have gone."""
        self._retired.extend(fd for fd, _ in self._fds.values())
        self._fds.clear()

    def cached(self, path: RelPath) -> tuple[int, RelPath] | None:
        return self._fds.get(path)

    def cache(self, path: RelPath, found: tuple[int, RelPath]) -> None:
        """Keep ``found`` (a descriptor the walker now owns, and where it leads) for ``path``."""
        old = self._fds.pop(path, None)
        if old is not None:
            self._retired.append(old[0])
        self._fds[path] = found
        if len(self._fds) > FD_CACHE_SIZE:
            self._retired.append(self._fds.popitem(last=False)[1][0])

    def retire(self, fd: int) -> None:
        """Close ``fd`` at the next ``release``, with the descriptors that left the cache."""
        self._retired.append(fd)

    def open_dir(
        self, name: str, dir_fd: int | None, path: RelPath, *, follow: bool = False
    ) -> int:
        """A descriptor of the directory ``name`` in ``dir_fd`` (resolved ``path``), to write in;
        as a user, widened (``rootless_owners.open_writable``).  ``follow``: the root only."""
        if self.privileged:
            return os.open(name, DIR_FLAGS & ~(os.O_NOFOLLOW if follow else 0), dir_fd=dir_fd)
        return open_writable(name, dir_fd, path, self._widened, follow=follow)

    def make_missing(self, parent_fd: int, path: RelPath) -> int:
        """Make the missing directory ``path`` in ``parent_fd`` for a walk; its descriptor."""
        raise NotImplementedError

    def replace_non_dir(self, parent_fd: int, path: RelPath) -> int | None:
        """A directory in place of the non-directory ``path`` a creating walk met, or None.

        None (the default) leaves the walk to follow it if it is a symlink,
        and to refuse it otherwise.
        """
        return None

    def walk(
        self,
        path: RelPath,
        entry: str,
        *,
        create: bool,
        follow: bool = True,
        marker: bool = False,
    ) -> tuple[int, RelPath] | None:
        """The directory at ``path``: a descriptor (cache-owned) and its resolved path.

        With ``follow``, symlinks on the way are followed inside the rootfs;
        without, meeting one gives None.  What follows a missing component
        is resolved lexically (``layer_rules.past_missing``): a ``..`` climbs
        back out of it, and missing directories the path ends in are made
        when ``create``, else give None.  A non-directory on the way is an
        error when ``create`` (the entry needs a parent), else gives None;
        so it is for a ``marker`` (whiteout or opaque marker in overlay
        form), which a non-directory leaves nothing to hide under.
        """
        if not path:
            self.remember(self.root_fd, ())
            return self.root_fd, ()
        start, fd, resolved = 0, self.root_fd, path[:0]
        for end in range(len(path), 0, -1):
            hit = self._fds.get(path[:end])
            if hit is not None and (follow or hit[1] == path[:end]):
                if end == len(path):
                    self._fds.move_to_end(path)
                    return hit
                start, (fd, resolved) = end, hit
                break
        found = self._walk(
            fd, resolved, path[start:], entry, create=create, follow=follow, marker=marker
        )
        if found is None:
            return None
        fd, resolved, lexical = found
        self.remember(fd, resolved)
        if lexical:
            # The way went through something missing, which a later entry
            # may make (a symlink, say): where ``path`` leads is not kept.
            self.retire(fd)
        else:
            self.cache(path, (fd, resolved))
        return fd, resolved

    def remember(self, fd: int, resolved: RelPath) -> None:
        """Note ``fd``'s times as those of ``resolved`` unless noted: call before changing it."""
        if resolved not in self._found_times:
            st = os.fstat(fd)
            self._found_times[resolved] = (st.st_atime_ns, st.st_mtime_ns)

    def passed_missing(self, path: RelPath) -> None:
        """Note that a walk went through the missing ``path`` lexically, making nothing there."""

    def _walk(
        self,
        fd: int,
        start: RelPath,
        parts: RelPath,
        entry: str,
        *,
        create: bool,
        follow: bool,
        marker: bool,
    ) -> tuple[int, RelPath, bool] | None:
        """``walk`` from ``fd`` (at ``start``): a descriptor the caller owns, where, and
        whether the way went through a missing path it made nothing at."""
        resolved = list(start)
        todo = list(reversed(parts))
        owned = done = lexical = False
        hops = 0
        try:
            while todo:
                part = todo.pop()
                if part == "..":  # only symlink targets bring these
                    if not resolved:
                        raise UnsafeLayer(self.layer, entry, "goes through a symlink above root")
                    resolved.pop()
                    step: int | str | _Missing | None = self.open_dir("..", fd, tuple(resolved))
                else:
                    step = self._step(fd, resolved, part, entry, create=create, marker=marker)
                if step is MISSING:
                    past = rules.past_missing(part, todo)
                    ends = past.ends
                    for way in past.passed:
                        if way != ends[: len(way)]:
                            lexical = True
                            self.passed_missing((*resolved, *way))
                    if ends and not create:
                        return None
                    for name in ends:  # the rest of the path: todo is empty
                        self.remember(fd, tuple(resolved))  # before the mkdir changes its time
                        made = self.make_missing(fd, (*resolved, name))
                        resolved.append(name)
                        if owned:
                            os.close(fd)
                        fd, owned = made, True
                    continue
                if step is None:
                    return None
                if isinstance(step, str):
                    hops += 1
                    if not follow:
                        return None
                    if hops > rules.MAX_SYMLINK_HOPS:
                        raise UnsafeLayer(self.layer, entry, "goes through too many symlinks")
                    absolute, more = rules.split_link_target(step)
                    if absolute:
                        if owned:
                            os.close(fd)
                        fd, owned, resolved = self.root_fd, False, []
                    todo.extend(reversed(more))
                    continue
                if part != "..":
                    resolved.append(part)
                if owned:
                    os.close(fd)
                fd, owned = step, True
            if not owned:
                fd, owned = os.dup(fd), True
            done = True
            return fd, tuple(resolved), lexical
        finally:
            if owned and not done:
                os.close(fd)

    def _step(
        self, fd: int, resolved: list[str], part: str, entry: str, *, create: bool, marker: bool
    ) -> int | str | _Missing | None:
        """Open directory ``part`` in ``fd``: its descriptor, a symlink's target, MISSING, or None.

        None: a non-directory the walk stops at (not ``create``, or a ``marker``).
        """
        try:
            return self.open_dir(part, fd, (*resolved, part))
        except FileNotFoundError:
            return MISSING
        except OSError as error:
            if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
        if create and not marker:
            fresh = self.replace_non_dir(fd, (*resolved, part))
            if fresh is not None:
                return fresh
        target = _readlink(fd, part)
        if target is None and create and not marker:
            where = "/".join((*resolved, part))
            raise bad_entry(self.layer, entry, f"needs {where!r} as a directory")
        return target

    def set_dir_times(self, dirs: Mapping[RelPath, tuple[int, int]]) -> None:
        """Give the directories in ``dirs`` their (mode, mtime), and those ``open_dir``
        widened the mode they had; the others the walk reached get the times they had then
        (``restore_found_times``)."""
        # Times first: walking there may need what the modes take away; a chmod keeps them.
        self.restore_found_times(dirs)
        self._set_modes(dirs, strict=True)

    def _set_modes(self, dirs: Mapping[RelPath, tuple[int, int]], *, strict: bool) -> None:
        """Set the modes of ``dirs`` and of the widened directories, deepest first.

        Deepest first, so that no walk goes through a directory whose mode
        may refuse it.  A walk may still widen one on its way, which is
        shallower and so set later.  ``strict``: an error is the layer's;
        otherwise (failing half way) what can be set is set.
        """
        widened: Widened = {}
        todo = [(-len(path), path) for path in dirs]
        heapq.heapify(todo)
        while True:
            for path, record in self._widened.items():
                if path not in dirs:
                    heapq.heappush(todo, (-len(path), path))
                widened.setdefault(path, record)
            self._widened.clear()
            if not todo:
                return
            path = heapq.heappop(todo)[1]
            try:
                self._set_mode(path, dirs.get(path), widened.get(path))
            except OSError as error:
                if strict:
                    # Left for ``__exit__`` to give back, as far as it can.
                    self._widened.update((p, r) for p, r in widened.items() if p not in dirs)
                    raise backend_error(self.layer, "/".join(path) or ".", error) from error
            finally:
                self.release()

    def _set_mode(
        self, path: RelPath, header: tuple[int, int] | None, widened: WideDir | None
    ) -> None:
        """Give the directory at ``path`` its header's (mode, mtime), or else, if it is
        still the one ``open_dir`` widened, its mode from before."""
        fd = self._pin(path) if path else self.root_fd
        if fd is None:
            return  # a later entry of the layer replaced it
        try:
            # A user cannot open a 0000 one: pinned (O_PATH), set through /proc.
            itself: int | str = fd if self.privileged else f"/proc/self/fd/{fd}"
            found = os.fstat(fd)
            if header is not None:
                os.chmod(itself, header[0])
                os.utime(itself, ns=(header[1], header[1]))
            elif widened is not None and widened.same(found):
                os.chmod(itself, widened.mode)
        finally:
            if fd != self.root_fd:
                os.close(fd)

    def _pin(self, path: RelPath) -> int | None:
        """A descriptor (a user's: O_PATH) of the directory at ``path``, or None if none."""
        found = self.walk(path[:-1], "/".join(path), create=False, follow=False)
        if found is None:
            return None
        try:
            return os.open(path[-1], DIR_FLAGS if self.privileged else _PIN_FLAGS, dir_fd=found[0])
        except OSError:
            return None

    def restore_found_times(self, keep: Container[RelPath]) -> None:
        """Give every directory the walk reached the times it had then, except those in ``keep``.

        Adding or removing a child changes a directory's mtime; (as umoci
        does) a directory the layer has no header for keeps the time the
        lower layer gave it.
        """
        for path, times in list(self._found_times.items()):
            if path in keep:
                continue
            if not path:
                os.utime(self.root_fd, ns=times)
                continue
            found = self.walk(path[:-1], "/".join(path), create=False, follow=False)
            try:
                if found is not None:
                    fd = os.open(path[-1], DIR_FLAGS, dir_fd=found[0])
                    try:
                        os.utime(fd, ns=times)
                    finally:
                        os.close(fd)
            except OSError:
                continue  # removed or replaced later in the layer: nothing to keep
            finally:
                self.release()


def _readlink(dir_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.EINVAL:  # not a symlink
            return None
        raise


def backend_error(layer: str, entry: str, error: OSError) -> BackendError:
    return BackendError(f"layer {layer}: entry {entry!r}: {error.strerror or error}")
