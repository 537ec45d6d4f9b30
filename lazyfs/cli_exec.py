"""Whether ``lazyfs run`` can execute a command in a rootfs, asked before runc is.

runc reports a command it cannot execute as its own failure (status 1, a
long log line); shells and ``docker run`` say 127 for a command that is not
there and 126 for one that cannot be executed. ``exec_problem`` finds those
two cases by looking in the rootfs the way the container will: symlinks
are followed inside the rootfs (an absolute target starts at its root, ``..``
stops there), a bare name is looked up in the container's ``PATH`` as runc
looks it up (Go's ``exec.LookPath``: the first regular file with an execute
bit), a name with a slash is taken from the working directory.

The container is more than its rootfs: runc mounts its own filesystems
in it (/proc, a tmpfs at /dev...), ``run`` bind-mounts image volumes
over those, and a command, a ``PATH`` entry or a working directory may
be in one. So the walk is through a ``ContainerView``: the rootfs, with
each mount in place of what lies below its path (of the mounts at or
above a path, the deepest has it: outer paths are mounted first), and
the directories runc makes to mount them on, which hold nothing else
where the tree below has none. A volume is its rootfs; runc's tmpfs,
devpts and mqueue are new, with no directory but the nodes runc makes
once all is mounted (``ContainerView.nodes``: /dev/null, /dev/fd...);
what /proc and /sys hold is the kernel's, not known before runc runs, so
a walk into one stops there (``Place.seen``) and runc judges.
A symlink is read in whichever tree holds it and followed in the
container, an absolute target from the container's root, as the kernel
follows it once the volumes are mounted; ``..`` climbs out of a volume
into what it is mounted on, and fails after a file (ENOTDIR). A bare
rootfs path is the view of a container without mounts.

Only reads; a rootfs changed by the command itself later is not its concern.
The image is hostile: each walk is bounded (``exec_formats.MAX_STEPS``: past it, runc
judges), a path no file can have (a NUL byte, a lone surrogate) is not there, and the
words show its text escaped and cut (``shown``).
``in_root`` is that walk alone; ``ContainerView.find`` tells how far a path
is there, for ``run`` to ask where runc would make a missing mount point or
working directory.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lazyfs.exec_formats import NOT_EXECUTABLE as NOT_EXECUTABLE
from lazyfs.exec_formats import NOT_FOUND as NOT_FOUND
from lazyfs.exec_formats import Budget, Found, OutOfSteps, format_problem
from lazyfs.exec_formats import shown as shown

_MAX_LINKS = 40  # as Linux's path walk


@dataclass(frozen=True)
class Mount:
    """A filesystem mounted in a container at ``parts``, the path runc mounts it on (symlinks
    resolved): a volume's rootfs (``source``), or one of runc's own (None), of the OCI type
    ``kind``; ``writable`` there or not; ``name``, its path as given."""

    parts: tuple[str, ...]
    source: Path | None
    writable: bool
    name: str
    kind: str = "bind"

    @property
    def seen(self) -> bool:
        """Whether what it holds is known here: a volume's rootfs, or one of runc's that
        is new and has no directory (the files of a devpts or mqueue are not looked for)."""
        return self.source is not None or self.kind in ("tmpfs", "devpts", "mqueue")


@dataclass(frozen=True)
class Place:
    """Where a container path leads: ``parts`` with symlinks resolved, of which the first
    ``there`` are there (all of them: the path is), the rest names of what is not.

    Not ``seen``: the rest is in a filesystem of the kernel's (/proc, /sys), whose
    contents are not known here (names, not resolved); or the walk took too many calls
    (``MAX_STEPS``: all names, ``..`` going up). ``linked``: the first part missing is
    one a symlink leads to, not one of the path's own; ``mkdir -p`` stops at that link
    (told without ``past_missing`` only).
    """

    parts: tuple[str, ...]
    there: int
    seen: bool = True
    linked: bool = False

    @property
    def exists(self) -> bool:
        """Whether the path is there, all of it."""
        return self.seen and self.there == len(self.parts)

    @property
    def found(self) -> tuple[str, ...]:
        """The deepest of it that is there: the path itself, or where it is missing from."""
        return self.parts[: self.there]


@dataclass(frozen=True)
class ContainerView:
    """A container's tree as its command sees it: ``rootfs`` (``writable`` or not, as
    provisioned) with ``mounts`` over it, in the order they are mounted, and the ``nodes``
    runc makes in its own once they all are, where nothing is: (path, "" for a device
    node or a symlink's target)."""

    rootfs: Path
    writable: bool = False
    mounts: tuple[Mount, ...] = ()
    nodes: tuple[tuple[tuple[str, ...], str], ...] = ()

    def holder(self, parts: Sequence[str]) -> Mount | None:
        """The mount that holds the container path ``parts``; None: the rootfs does.

        The deepest of those at or above it, the last mounted: it hides what is
        below its path (a mount it hides is no longer in ``mounts``).
        """
        found = None
        for mount in self.mounts:
            if tuple(parts[: len(mount.parts)]) == mount.parts:
                found = mount
        return found

    def host(self, parts: Sequence[str]) -> Path | None:
        """Where the container path ``parts`` would be on this machine; None in one of
        runc's own filesystems, which are not."""
        mount = self.holder(parts)
        if mount is None:
            return self.rootfs.joinpath(*parts)
        if mount.source is None:
            return None
        return mount.source.joinpath(*parts[len(mount.parts) :])

    def is_dir(self, parts: Sequence[str]) -> bool:
        """Whether the container path ``parts``, which is there, is a directory."""
        if self.made_dir(parts):
            return True
        host = self.host(parts)
        return host is not None and host.is_dir()

    def made_dir(self, parts: Sequence[str]) -> bool:
        """Whether ``parts`` is the container's root, a mount's, or above one: a directory
        whatever the tree below has there (runc made it, if need be, to mount on)."""
        depth = len(parts)
        return not parts or any(
            len(mount.parts) >= depth and mount.parts[:depth] == tuple(parts)
            for mount in self.mounts
        )

    def can_make(self, parts: Sequence[str]) -> bool:
        """Whether runc can make a directory in the container's directory ``parts``."""
        mount = self.holder(parts)
        return self.writable if mount is None else mount.writable

    def named(self, parts: Sequence[str]) -> str:
        """What holds ``parts``, as a message names it."""
        mount = self.holder(parts)
        if mount is None:
            return "the rootfs"
        return (
            f"volume {mount.name}"
            if mount.source is not None
            else f"runc's {mount.kind} at {mount.name}"
        )

    def read_only(self, parts: Sequence[str]) -> tuple[str, str]:
        """What holds ``parts``, read-only, as a message names it; and what would make it
        writable."""
        mount = self.holder(parts)
        if mount is None:
            return "the read-only rootfs", "run it without --read-only"
        if mount.source is None:
            return f"runc's {mount.kind} at {mount.name}", "use a path outside it"
        return f"the read-only volume {mount.name}", f"mount {mount.name} with :rw"

    def find(self, path: str, *, past_missing: bool = False) -> Place | None:
        """Where the container path ``path`` leads; None through a symlink loop.

        The walk stops at the first part not there, as the kernel's does; with
        ``past_missing`` it takes what follows as names (``..`` going up), as runc
        resolves where to make a mount point. Not ``seen`` past ``MAX_STEPS`` calls.
        """
        try:
            return _walk(self, path, Budget(), past_missing=past_missing)
        except OutOfSteps:  # a hostile WorkingDir (millions of ``d/..``), or links
            names = posixpath.normpath(f"/{path}").split("/")
            return Place(tuple(filter(None, names)), 0, seen=False)

    def node(self, parts: Sequence[str]) -> str | None:
        """What runc makes at ``parts`` (``nodes``): "" a device node, else a link's target."""
        return dict(self.nodes).get(tuple(parts))

    def mounted(
        self, place: Place, source: Path | None, *, writable: bool, name: str, kind: str = "bind"
    ) -> ContainerView:
        """This view with ``source`` (None: runc's ``kind``) mounted at ``place``, over the
        mounts it hides."""
        mount = Mount(place.parts, source, writable, name, kind)
        depth = len(mount.parts)
        kept = tuple(m for m in self.mounts if m.parts[:depth] != mount.parts)
        return replace(self, mounts=(*kept, mount))


def _view(root: Path | ContainerView) -> ContainerView:
    return root if isinstance(root, ContainerView) else ContainerView(root)


def exec_problem(
    root: Path | ContainerView, args: Sequence[str], env: Sequence[str], cwd: str = "/"
) -> tuple[str, int] | None:
    """None if ``args[0]`` can be executed in ``root`` (a rootfs, or a container's view);
    else the line and exit status.

    None too when telling would take more than ``exec_formats.MAX_STEPS`` filesystem calls, or
    looking in /proc or /sys, which runc alone sees.
    """
    if not args:
        return None
    if any("\0" in text for text in (*args, *env, cwd)):
        # From the image's config: exec(2) takes no such string, and os.lstat raises on one.
        return "the command, its environment or its working directory holds a NUL byte", (
            NOT_EXECUTABLE
        )
    try:
        return _problem(_view(root), args[0], env, cwd, Budget())
    except OutOfSteps:
        return None


def _problem(
    view: ContainerView, name: str, env: Sequence[str], cwd: str, budget: Budget
) -> tuple[str, int] | None:
    if "/" not in name:
        path = _env_value(env, "PATH")
        unseen = False  # an entry in /proc or /sys: whether it has the command, runc tells
        for directory in path.split(":"):
            place = _walk(view, f"{_absolute(directory or '.', cwd)}/{name}", budget)
            if place is None:
                continue
            unseen = unseen or not place.seen
            if place.exists and _why_not_executable(view, place, budget) is None:
                return _format(view, place, name, cwd, budget)
        if unseen:
            return None
        return (
            f"{shown(name)}: command not found in the container (PATH={shown(path)})",
            NOT_FOUND,
        )
    place = _walk(view, _absolute(name, cwd), budget)
    if place is not None and not place.seen:
        return None
    if place is None or not place.exists:
        return f"{shown(name)}: no such file in the container", NOT_FOUND
    why = _why_not_executable(view, place, budget)
    if why is not None:
        return f"{shown(name)}: cannot be executed in the container: {why}", NOT_EXECUTABLE
    return _format(view, place, name, cwd, budget)


def _format(
    view: ContainerView, place: Place, name: str, cwd: str, budget: Budget
) -> tuple[str, int] | None:
    """What the kernel makes of the executable file at ``place``, exec'ed as ``name``: its
    interpreters and loader are looked for as the command is (``lazyfs.exec_formats``)."""

    def find(path: str) -> Found:
        there = _walk(view, _absolute(path, cwd), budget)
        if there is None or not there.seen:  # a link loop (ELOOP), or /proc: runc judges
            return Found()
        if not there.exists:
            return Found(missing=True)
        return Found(view.host(there.parts), _why_not_executable(view, there, budget))

    host = view.host(place.parts)
    problem = None if host is None else format_problem(name, host, find, budget.spend)
    return None if problem is None else (f"{shown(name)}: {problem[0]}", problem[1])


def _absolute(path: str, cwd: str) -> str:
    return path if path.startswith("/") else f"{cwd.rstrip('/')}/{path}"


def _env_value(env: Sequence[str], key: str) -> str:
    for item in reversed(env):  # runc sets each in turn: the last one holds
        name, _, value = item.partition("=")
        if name == key:
            return value
    return ""


def _why_not_executable(view: ContainerView, place: Place, budget: Budget) -> str | None:
    path = view.host(place.parts)
    if view.made_dir(place.parts):  # in runc's tmpfs, the directories it makes
        return "it is a directory"
    if path is None:  # and the device nodes
        return "it is not a regular file"
    budget.spend()
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISDIR(mode):
        return "it is a directory"
    if not stat.S_ISREG(mode):
        return "it is not a regular file"
    if not mode & 0o111:
        return "it has no execute permission"
    return None


def in_root(root: Path | ContainerView, path: str) -> Path | None:
    """Where ``path`` of the container is on this machine, under ``root`` (a rootfs, or a
    container's view); None if it does not exist, or is not on this machine: in runc's
    own filesystems, or a directory runc makes where the tree below has none; or if
    finding it takes more than ``exec_formats.MAX_STEPS`` calls (a hostile image's links).

    The final component is resolved too, so the answer is never a symlink.
    """
    view = _view(root)
    try:
        place = _walk(view, path, Budget())
    except OutOfSteps:
        return None
    if place is None or not place.exists:
        return None
    host = view.host(place.parts)
    return host if host is not None and os.path.lexists(host) else None


def _walk(
    view: ContainerView, path: str, budget: Budget, *, past_missing: bool = False
) -> Place | None:
    """``path`` resolved in ``view`` (see ``ContainerView.find``). Each lstat, stat and
    readlink is spent from ``budget``."""
    # Reversed, taken from the end: a path may have millions of parts.
    todo = [part for part in reversed(path.split("/")) if part not in ("", ".")]
    own = len(todo)  # the path's own parts, below those of the links met
    done: list[str] = []
    there: int | None = None  # once a part is missing: how many before it are there
    links = 0
    while todo:
        linked = len(todo) > own
        own = min(own, len(todo) - 1)
        part = todo.pop()
        if part == "..":
            # The kernel looks ``..`` up in what comes before: a file has none (ENOTDIR).
            # runc finds where to mount by names alone (securejoin), as past_missing does.
            if there is None and done and not past_missing and not _is_dir(view, done, budget):
                return Place((*done, part, *reversed(todo)), len(done))
            if done:
                done.pop()
            if there is not None and len(done) <= there:
                there = None  # back where the parts are there
            continue
        if there is not None:  # below what is missing, nothing is there
            done.append(part)
            continue
        if view.made_dir([*done, part]):
            done.append(part)
            continue
        mount = view.holder([*done, part])
        if mount is not None and not mount.seen:
            return Place((*done, part, *reversed(todo)), len(done), seen=False)
        target = view.node([*done, part])  # runc's: "" a device node, else a symlink
        if target is None:
            here = view.host([*done, part])
            budget.spend()
            try:
                if here is None:  # runc's tmpfs...: nothing but what runc makes in it
                    raise FileNotFoundError
                mode = os.lstat(here).st_mode
            except (OSError, ValueError):
                # ValueError: a NUL byte, a lone surrogate (UnicodeEncodeError): no file's name
                there = len(done)
                done.append(part)
                if not past_missing:
                    return Place((*done, *reversed(todo)), there, linked=linked)
                continue
            if stat.S_ISLNK(mode):
                budget.spend()
                target = os.readlink(here)
        if target:  # a symlink's is never empty
            links += 1
            if links > _MAX_LINKS:
                return None
            if target.startswith("/"):
                done = []
            todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
            continue
        done.append(part)
    return Place(tuple(done), len(done) if there is None else there)


def _is_dir(view: ContainerView, parts: Sequence[str], budget: Budget) -> bool:
    if not view.made_dir(parts):
        budget.spend()
    return view.is_dir(parts)
