"""A pull's progress: bars on a terminal that fit its width, nothing on a pipe,
and a pull of a stored image that says so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs
from tests.support.terminal import run_on_terminal, screen_lines

pytestmark = pytest.mark.integration


def pull_on_terminal(lazyfs: Lazyfs, columns: int, *args: str) -> tuple[int, str]:
    """Run ``lazyfs pull`` with stderr on a terminal ``columns`` wide; its status and stderr."""
    return run_on_terminal(lazyfs.argv("pull", *args), columns)


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
        "lazyfs: docker.io/library/busybox:latest: every layer already stored, nothing fetched\n"
    )


def test_no_bars_when_stderr_is_no_terminal(lazyfs: Lazyfs, tmp_path: Path) -> None:
    result = lazyfs("pull", "busybox")
    assert result.stderr == ""
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
