"""``lazyfs run``'s exit status, as ``docker run``'s: 125 for its own errors (the
command never ran), 126/127 for a command that cannot run, else the command's."""

from __future__ import annotations

import pytest

from tests.support.lazyfs_cli import Lazyfs

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
