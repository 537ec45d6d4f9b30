"""A command whose stdout nobody reads any more (``lazyfs cache | head -1``, once head
has gone) ends as docker's and cat's do: no line, SIGPIPE's status (141), whichever
command it is and whether Python buffers stdout or not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PRINTING = [
    ["cache"],
    ["cache", "--json"],
    ["images"],
    ["images", "--json"],
    ["ps"],
    ["ps", "--json"],
    ["--version"],
    ["--help"],
    ["help"],
    ["help", "images", "rm"],
    ["images", "prune"],
]


def closed_stdout_run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m lazyfs ARGV`` with stdout a pipe whose reader has closed it."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "lazyfs", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("argv", PRINTING, ids=" ".join)
def test_a_command_whose_reader_went_away_ends_quietly(
    tmp_path: Path, argv: list[str], buffered: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAZYFS_", "PYTHONUNBUF"))}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    # A store there, so that `images prune` prunes it.
    (tmp_path / "work" / "store" / "docker").mkdir(parents=True)
    result = closed_stdout_run(["--work_dir", str(tmp_path / "work"), *argv], env)
    assert (result.returncode, result.stderr) == (141, "")


@pytest.mark.parametrize(
    ("argv", "status"), [(["--version"], 0), (["help"], 0), (["images"], 0), (["nope"], 2)]
)
def test_a_command_started_with_no_stdout_at_all_runs_as_ever(
    tmp_path: Path, argv: list[str], status: int
) -> None:
    # `lazyfs ... >&-`: Python has no sys.stdout then; what would be printed goes nowhere.
    command = [sys.executable, "-m", "lazyfs", "--work_dir", str(tmp_path / "work"), *argv]
    result = subprocess.run(
        ["sh", "-c", '"$@" >&-', "sh", *command],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
