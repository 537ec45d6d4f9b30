"""What runc said about itself, told apart from what the container wrote.

``lazyfs run`` gives runc a log file (``runc --log FILE --log-format json``): runc
writes its own messages there, one JSON object a line, never the container's
output. runc 1.1 logs "runc run failed: ..." at level error as it gives up, before
the container's command ever ran, and exits 1, which the container's command could
have exited with too: the log tells the two apart. With its log in a file, runc
prints that error on its stderr as one plain line as well (and its warnings in the
log alone), so the caller has its reason in one line already.

Imports: the standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

_FAILED = ("error", "fatal")
_PREFIX = "runc run failed: "  # the wrapper of every error of runc's run command


class Entry(NamedTuple):
    level: str
    msg: str


def entries(log: Path) -> list[Entry]:
    """The entries of runc's JSON log ``log``, in order; none when it is missing.

    A line that is no JSON object (runc died while writing it) is kept as an error,
    shown as runc's (``others``), not taken for its failure to run the container.
    """
    try:
        text = log.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
            found.append(Entry(str(item.get("level", "")), str(item.get("msg", ""))))
        except (ValueError, AttributeError):
            if line.strip():
                found.append(Entry("error", line.strip()))
    return found


def failure(found: list[Entry]) -> str | None:
    """runc's error, one line, if it failed to run the container; None if the container ran.

    Told by the last entry: runc's fatal end, an error or fatal entry of its run
    command (``runc run failed: ...``), after which it exits. It logs errors of
    its own after a container ran too (a cgroup it could not remove, a signal it
    could not pass on): those are ``others``.
    """
    if found and found[-1].level in _FAILED and found[-1].msg.startswith(_PREFIX):
        return _line(found[-1].msg).removeprefix(_PREFIX)
    return None


def others(found: list[Entry]) -> list[str]:
    """runc's warnings and errors but its fatal end (``failure``), one line each, with
    their level: ``warning: ...``."""
    shown = found[:-1] if failure(found) is not None else found
    levels = {"warn": "warning", "warning": "warning", "error": "error", "fatal": "error"}
    return [f"{levels[e.level]}: {_line(e.msg)}" for e in shown if e.level in levels]


def _line(message: str) -> str:
    return " ".join(message.split())
