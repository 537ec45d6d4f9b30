"""A command run with its stderr on a terminal of a given width, and what that terminal shows.

For the progress tests: ``lazyfs`` draws bars only on a terminal, so the
tests give it one (a pty) and read back what it wrote, escapes and all.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import subprocess
import termios
from collections.abc import Sequence
from pathlib import Path

# CSI sequences (colours, cursor moves, erase) and the two-byte escapes rich writes.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78]")


def run_on_terminal(
    argv: Sequence[str], columns: int, *, cwd: Path | None = None, timeout: float = 120
) -> tuple[int, str]:
    """Run ``argv`` with stderr on a terminal ``columns`` wide; its status and stderr."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=env,
        )
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError as error:  # EIO: the last writer closed the terminal
                if error.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    return process.wait(timeout=timeout), b"".join(chunks).decode("utf-8", "replace")


def screen_lines(text: str) -> list[str]:
    """What each redraw leaves on a line: escapes dropped, split at CR and LF."""
    return [line for line in re.split(r"[\r\n]", _ESCAPES.sub("", text)) if line.strip()]
