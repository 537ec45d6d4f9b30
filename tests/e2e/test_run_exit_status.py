"""``lazyfs run``'s exit status, as ``docker run``'s: 125 for its own errors (the
command never ran), 126/127 for a command that cannot run, else the command's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.lazyfs_cli import REPO, Lazyfs

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["no-such-image:latest", "--", "true"], "no-such-image"),
        (["-u", "nobody-here", "busybox", "--", "true"], "nobody-here"),
    ],
)
def test_runs_own_errors_exit_125(lazyfs: Lazyfs, args: list[str], said: str) -> None:
    result = lazyfs("run", "--backend", "copy", *args, check=False)
    assert result.returncode == 125, result.stderr
    assert result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert list((lazyfs.work_dir / "provisioner" / "containers").iterdir()) == []


@pytest.mark.parametrize(
    ("command", "status"),
    [(["no-such-command"], 127), (["sh", "-c", "exit 1"], 1), (["sh", "-c", "exit 2"], 2)],
)
def test_the_commands_status_is_runs(lazyfs: Lazyfs, command: list[str], status: int) -> None:
    result = lazyfs("run", "--backend", "copy", "busybox", "--", *command, check=False)
    assert result.returncode == status, result.stderr
    assert list((lazyfs.work_dir / "provisioner" / "containers").iterdir()) == []


# lazyfs with an audit hook under which marking a container destroyed fails, as a
# destroy may fail (EBUSY, EIO) once its command has run.
FAILING_DESTROY = """
import runpy, sys

def hook(name, args):
    if name == "os.rename" and str(args[1]).endswith("/destroying"):
        raise PermissionError(13, "refused for the test", str(args[1]))

sys.addaudithook(hook)
sys.argv = ["lazyfs", *sys.argv[1:]]
runpy.run_module("lazyfs", run_name="__main__", alter_sys=True)
"""


def test_a_destroy_failing_after_the_command_ran_keeps_its_status(lazyfs: Lazyfs) -> None:
    # The command ran: its status is the run's, not 125 (no command ran) nor 1.
    argv = lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", "exit 3")
    result = subprocess.run(
        [sys.executable, "-c", FAILING_DESTROY, *argv[3:]],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "stays for recover" in result.stderr and "Traceback" not in result.stderr
    (left,) = (lazyfs.work_dir / "provisioner" / "containers").iterdir()
    lazyfs("destroy", left.name)  # as recover would
