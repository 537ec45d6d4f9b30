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


def exec_problem(
    rootfs: Path, args: Sequence[str], env: Sequence[str], cwd: str = "/"
) -> tuple[str, int] | None:
    """None if ``args[0]`` can be executed in ``rootfs``; else the line and exit status."""
    if not args:
        return None
    if any("\0" in text for text in (*args, *env, cwd)):
        # From the image's config: exec(2) takes no such string, and os.lstat raises on one.
        return "the command, its environment or its working directory holds a NUL byte", (
            NOT_EXECUTABLE
        )
    name = args[0]
    if "/" not in name:
        path = _env_value(env, "PATH")
        for directory in path.split(":"):
            found = in_root(rootfs, f"{_absolute(directory or '.', cwd)}/{name}")
            if found is not None and _why_not_executable(found) is None:
                return None
        return f"{name}: command not found in the container (PATH={path})", NOT_FOUND
    found = in_root(rootfs, _absolute(name, cwd))
    if found is None:
        return f"{name}: no such file in the container", NOT_FOUND
    why = _why_not_executable(found)
    if why is not None:
        return f"{name}: cannot be executed in the container: {why}", NOT_EXECUTABLE
    return None


def _absolute(path: str, cwd: str) -> str:
    return path if path.startswith("/") else f"{cwd.rstrip('/')}/{path}"


def _env_value(env: Sequence[str], key: str) -> str:
    for item in reversed(env):  # runc sets each in turn: the last one holds
        name, _, value = item.partition("=")
        if name == key:
            return value
    return ""


def _why_not_executable(path: Path) -> str | None:
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
    todo = [part for part in path.split("/") if part not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = rootfs.joinpath(*done, part)
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            links += 1
            if links > _MAX_LINKS:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return rootfs.joinpath(*done)
