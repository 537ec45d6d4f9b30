"""A SIGINT to ``lazyfs run -t`` once its container has ended leaves the container's status.

``run -t`` sends SIGINT by ``runc kill``, and to runc itself only while there is
no container yet. Between the container's end and runc reaping it, kill fails
too; runc under a terminal takes a SIGINT of its own for a Ctrl-C and exits 0 at
once. ``run`` sends nothing then. The test holds runc in that moment (stopped,
its container's init dead and not reaped) while ``run`` handles the SIGINT.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs, on_new_terminal, read_until

pytestmark = pytest.mark.integration

# wait4's number, as /proc/PID/syscall shows a process blocked in it (os.waitpid).
WAIT4 = {"x86_64": 61, "aarch64": 260}
DEADLINE = 60.0


def _children(pid: int, comm: str) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread or child that just ended
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                if Path(f"/proc/{child}/comm").read_text().strip() == comm:
                    found.append(int(child))
    return found


def _state(pid: int) -> str:
    """The state letter of /proc/PID/stat (after the command name, which may hold anything)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split()[1]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def _pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` waits to be taken by ``pid`` (sent to the process, or a thread)."""
    bit = 1 << (signum - 1)
    return any(int(_status_field(pid, field), 16) & bit for field in ("ShdPnd", "SigPnd"))


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a state ``condition()`` reports, failing after DEADLINE. It waits for a
    state to be reached, not for a race to go one way: each state is one the process
    stays in until the test moves it on."""
    end = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < end, f"never {what}"
        time.sleep(0.01)


def test_sigint_after_the_container_ended_leaves_its_status(lazyfs: Lazyfs) -> None:
    wait4 = WAIT4.get(platform.machine())
    assert wait4 is not None, f"no wait4 number known for {platform.machine()}"
    # Said as the shell computes it: nothing run writes on its terminal before can match.
    script = "echo ready-$((3 + 4)); while :; do sleep 1000 & wait; done"
    argv = lazyfs.argv("run", "-t", "--backend", "copy", "busybox", "--", "sh", "-c", script)
    run, main = on_new_terminal(argv)
    seen = b""
    held: list[int] = []  # runc, while the test holds it stopped
    try:
        seen = read_until(main, b"ready-7", timeout=DEADLINE)
        (runc,) = _children(run.pid, "runc")
        state_root = lazyfs.work_dir / "runc"
        (container_id,) = os.listdir(state_root)
        state = subprocess.run(
            ["runc", "--root", str(state_root), "state", container_id],
            capture_output=True,
            check=True,
        )
        init = json.loads(state.stdout)["pid"]
        # runc held: it cannot reap its container's init, nor delete its state.
        held.append(runc)
        os.kill(runc, signal.SIGSTOP)
        _until(lambda: _state(runc) == "T", "stopped")
        ended = os.pidfd_open(init)
        try:
            os.kill(init, signal.SIGKILL)
            assert select.select([ended], [], [], DEADLINE)[0], "the container's init lives on"
        finally:
            os.close(ended)
        run.send_signal(signal.SIGINT)

        def handled() -> bool:
            # Taken (not pending), and run back in its wait for runc: its handler is done,
            # since Python runs it before it waits again.
            if _pending(run.pid, signal.SIGINT):
                return False
            call = Path(f"/proc/{run.pid}/syscall").read_text().split()
            return call[0] == str(wait4) and int(call[1], 16) == runc

        _until(handled, "handled")
        assert not _pending(runc, signal.SIGINT), "run sent runc a SIGINT of its own"
        os.kill(held.pop(), signal.SIGCONT)
        while True:
            assert select.select([main], [], [], DEADLINE)[0], seen
            try:
                chunk = os.read(main, 4096)
            except OSError as error:  # EIO: run, the terminal's last user, ended
                assert error.errno == errno.EIO
                break
            if not chunk:
                break
            seen += chunk
        code = run.wait(timeout=DEADLINE)
    finally:
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if run.poll() is None:
            run.kill()
            run.wait()
        os.close(main)
    assert code == 128 + signal.SIGKILL, seen
