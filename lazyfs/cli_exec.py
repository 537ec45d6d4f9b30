"""Whether ``lazyfs run`` can execute a command in a rootfs, asked before runc is.

runc reports a command it cannot execute as its own failure (status 1, a
long log line); shells and ``docker run`` say 127 for a command that is not
there and 126 for one that cannot be executed. ``exec_problem`` finds those
two cases by looking in the rootfs the way the container will: symlinks
are followed inside the rootfs (an absolute target starts at its root, ``..``
stops there), a bare name is looked up in the container's ``PATH`` as runc
looks it up (Go's ``exec.LookPath``: the first regular file with an execute
bit), a name with a slash is taken from the working directory.

Only reads; a rootfs changed by the command itself later is not its concern.
The image is hostile: the walk is bounded (``_MAX_STEPS``), and the words
show its text escaped and cut (``shown``).
``in_root`` is that walk alone: ``run`` asks it whether a read-only rootfs
has the directory a volume is to be mounted on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

NOT_FOUND = 127
NOT_EXECUTABLE = 126
_MAX_LINKS = 40  # as Linux's path walk
# Filesystem calls (lstat, readlink, stat) one exec_problem may make. A real image's
# PATH has a handful of entries a link or two deep: tens of calls. A hostile one asks
# for billions (a 16 MiB config holds ~4M PATH entries, each 40 links of ~800 parts)
# in a thread that Ctrl-C and SIGTERM cannot stop. Past this, runc judges.
_MAX_STEPS = 4096
_SHOWN_MOST = 300  # characters of image text in a message: a PATH may be 16 MiB


class _OutOfSteps(Exception):
    """The budget of filesystem calls is spent: whether the command runs is not told."""


class _Budget:
    """What is left of ``_MAX_STEPS``, shared by all the walks of one exec_problem."""

    def __init__(self) -> None:
        self.left = _MAX_STEPS

    def spend(self) -> None:
        if self.left <= 0:
            raise _OutOfSteps
        self.left -= 1


def exec_problem(
    rootfs: Path, args: Sequence[str], env: Sequence[str], cwd: str = "/"
) -> tuple[str, int] | None:
    """None if ``args[0]`` can be executed in ``rootfs``; else the line and exit status.

    None too when telling would take more than ``_MAX_STEPS`` filesystem calls.
    """
    if not args:
        return None
    if any("\0" in text for text in (*args, *env, cwd)):
        # From the image's config: exec(2) takes no such string, and os.lstat raises on one.
        return "the command, its environment or its working directory holds a NUL byte", (
            NOT_EXECUTABLE
        )
    try:
        return _problem(rootfs, args[0], env, cwd, _Budget())
    except _OutOfSteps:
        return None


def _problem(
    rootfs: Path, name: str, env: Sequence[str], cwd: str, budget: _Budget
) -> tuple[str, int] | None:
    if "/" not in name:
        path = _env_value(env, "PATH")
        for directory in path.split(":"):
            found = _walk(rootfs, f"{_absolute(directory or '.', cwd)}/{name}", budget)
            if found is not None and _why_not_executable(found, budget) is None:
                return None
        return (
            f"{shown(name)}: command not found in the container (PATH={shown(path)})",
            NOT_FOUND,
        )
    found = _walk(rootfs, _absolute(name, cwd), budget)
    if found is None:
        return f"{shown(name)}: no such file in the container", NOT_FOUND
    why = _why_not_executable(found, budget)
    if why is not None:
        return f"{shown(name)}: cannot be executed in the container: {why}", NOT_EXECUTABLE
    return None


def shown(text: str) -> str:
    """Image text as a message shows it: as it is when printable, else quoted with its
    escape sequences spelled out (none reaches the terminal); cut to ``_SHOWN_MOST``."""
    head = text[:_SHOWN_MOST]
    words = head if head.isprintable() else repr(head)
    if len(text) > _SHOWN_MOST:
        words += f"... (cut, {len(text)} characters)"
    return words


def _absolute(path: str, cwd: str) -> str:
    return path if path.startswith("/") else f"{cwd.rstrip('/')}/{path}"


def _env_value(env: Sequence[str], key: str) -> str:
    for item in reversed(env):  # runc sets each in turn: the last one holds
        name, _, value = item.partition("=")
        if name == key:
            return value
    return ""


def _why_not_executable(path: Path, budget: _Budget) -> str | None:
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


def in_root(rootfs: Path, path: str) -> Path | None:
    """Where ``path`` of the container is under ``rootfs``; None if it does not exist.

    The final component is resolved too, so the answer is never a symlink.
    """
    return _walk(rootfs, path, None)


def _walk(rootfs: Path, path: str, budget: _Budget | None) -> Path | None:
    """in_root, each lstat and readlink spent from ``budget`` (none: not bounded)."""
    # Reversed, taken from the end: a path may have millions of parts.
    todo = [part for part in reversed(path.split("/")) if part not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        here = rootfs.joinpath(*done, part)
        if budget is not None:
            budget.spend()
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            links += 1
            if links > _MAX_LINKS:
                return None
            if budget is not None:
                budget.spend()
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
            continue
        done.append(part)
    return rootfs.joinpath(*done)
