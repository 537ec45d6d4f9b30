"""What ``lazyfs run`` hands its container as stdin, stdout, stderr and TERM.

A closed stdin, stdout or stderr is /dev/null to lazyfs and what it runs,
never a file of lazyfs' or runc's that took its number; ``-t`` sets TERM=xterm as docker
run -t does, unless the image or ``-e`` gives TERM.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from providers.manifest import RuntimeConfig
from tests.support.lazyfs_cli import Lazyfs, in_terminal, one_line_error

pytestmark = pytest.mark.integration

# What the container says, on stdout and on stderr.
PROBE = "echo out; echo err >&2"


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def run_closed(lazyfs: Lazyfs, closed: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``lazyfs ARGS`` with its descriptor ``closed`` closed."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {closed}>&-', "sh", *lazyfs.argv(*args)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("closed", "out", "err"),
    [
        # Lost, as docker run's >&- loses it: not copied by runc into its log, then
        # shown as runc's error.
        (1, "", "err\n"),
        # Lost too, and run runs: lazyfs' own stderr is somewhere to write.
        (2, "out\n", ""),
    ],
)
def test_a_closed_stdout_or_stderr_loses_what_the_container_writes_there(
    lazyfs: Lazyfs, closed: int, out: str, err: str
) -> None:
    result = run_closed(
        lazyfs, closed, "run", "--backend", "copy", "busybox", "--", "sh", "-c", PROBE
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, out, err)
    assert containers(lazyfs.work_dir) == []


def test_run_t_with_stdin_closed_is_one_line(lazyfs: Lazyfs) -> None:
    result = run_closed(lazyfs, 0, "run", "-t", "busybox", "--", "true")
    assert "run -t: stdin is not a terminal" in one_line_error(result)


def test_run_t_sets_term_unless_given(lazyfs: Lazyfs) -> None:
    probe = ["sh", "-c", 'echo "TERM=${TERM-unset}."']
    result = in_terminal(lazyfs.argv("run", "-t", "busybox", "--", *probe))
    assert result.returncode == 0, result.stdout
    assert "TERM=xterm." in result.stdout
    result = in_terminal(lazyfs.argv("run", "-t", "-e", "TERM=foo", "busybox", "--", *probe))
    assert result.returncode == 0, result.stdout
    assert "TERM=foo." in result.stdout
    # Without a terminal, none: as docker run without -t.
    assert lazyfs("run", "busybox", "--", *probe).stdout == "TERM=unset.\n"
    assert containers(lazyfs.work_dir) == []


def test_the_images_term_stays() -> None:
    from lazyfs.cli_container import with_tty_term

    config = RuntimeConfig(env=("PATH=/bin", "TERM=vt100"))
    assert with_tty_term(config, tty=True).env == ("PATH=/bin", "TERM=vt100")
    bare = RuntimeConfig(env=("PATH=/bin",))
    assert with_tty_term(bare, tty=True).env == ("PATH=/bin", "TERM=xterm")
    assert with_tty_term(bare, tty=False).env == ("PATH=/bin",)
