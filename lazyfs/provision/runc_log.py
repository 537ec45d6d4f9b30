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

    A line that is no JSON object (runc died while writing it) is kept as an error:
    runc did not end well.
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

    runc logs at level error or fatal only as it gives up: it exits right after.
    """
    for entry in reversed(found):
        if entry.level in _FAILED:
            message = " ".join(entry.msg.split())
            return message.removeprefix(_PREFIX)
    return None


def warnings(found: list[Entry]) -> list[str]:
    """runc's warnings, one line each."""
    return [" ".join(e.msg.split()) for e in found if e.level in ("warning", "warn")]
