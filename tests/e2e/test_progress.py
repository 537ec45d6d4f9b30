"""A pull's progress: bars on a terminal that fit its width, nothing on a pipe,
and a pull of a stored image that says so."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

# CSI sequences (colours, cursor moves, erase) and the two-byte escapes rich writes.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78]")


def pull_on_terminal(lazyfs: Lazyfs, columns: int, *args: str) -> tuple[int, str]:
    """Run ``lazyfs pull`` with stderr on a terminal ``columns`` wide; its status and stderr."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    env.pop("NO_COLOR", None)
    try:
        process = subprocess.Popen(
            lazyfs.argv("pull", *args),
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
    return process.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")


def screen_lines(text: str) -> list[str]:
    """What each redraw leaves on a line: escapes dropped, split at CR and LF."""
    return [line for line in re.split(r"[\r\n]", _ESCAPES.sub("", text)) if line.strip()]


def test_a_pull_on_a_terminal_shows_bars_that_fit_it(lazyfs: Lazyfs) -> None:
    status, shown = pull_on_terminal(lazyfs, 80, "busybox")
    assert status == 0, shown
    lines = screen_lines(shown)
    assert lines, shown
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    bars = [line for line in lines if line.startswith("sha256:")]
    assert bars, lines
    # Bytes in binary units, percent, and the total of several blobs.
    assert any("MiB" in line and "100%" in line for line in bars), bars
    assert not re.search(r"\d ?[kMG]B\b", shown), shown  # binary units only, speeds too
    assert any(line.startswith("total") for line in lines), lines


def test_a_pull_on_a_narrow_terminal_wraps_nothing(lazyfs: Lazyfs) -> None:
    status, shown = pull_on_terminal(lazyfs, 50, "busybox")
    assert status == 0, shown
    assert all(len(line) <= 50 for line in screen_lines(shown)), screen_lines(shown)


def test_a_pull_of_a_stored_image_says_so_on_a_terminal_and_a_pipe(lazyfs: Lazyfs) -> None:
    lazyfs("pull", "busybox")
    status, shown = pull_on_terminal(lazyfs, 80, "busybox")
    assert status == 0, shown
    assert any("already stored" in line for line in screen_lines(shown)), shown
    piped = lazyfs("pull", "busybox")
    assert piped.stderr == (
        "lazyfs: docker.io/library/busybox:latest: already stored, nothing fetched\n"
    )


def test_no_bars_when_stderr_is_no_terminal(lazyfs: Lazyfs, tmp_path: Path) -> None:
    result = lazyfs("pull", "busybox")
    assert result.stderr == ""
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
