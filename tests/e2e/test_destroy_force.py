"""``lazyfs destroy --force`` kills a container runc still runs, as ``docker rm -f``.

The container's PID 1 is ``sleep``, which has no handler for SIGTERM: the
kernel drops it for a PID 1, so neither a killed run's parent-death signal
nor a forwarded one stops it. Only SIGKILL through runc does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from backends.mounts import mounts_under
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

BOUND = 60.0  # seconds anything polled below may take, on a loaded machine


def runc_state(work: Path, cid: str) -> dict[str, object] | None:
    answer = subprocess.run(
        ["runc", "--root", str(work / "runc"), "state", cid],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return json.loads(answer.stdout) if answer.returncode == 0 else None


def poll(what: str, done: object) -> None:
    """Wait until ``done()`` is true; fail after ``BOUND`` seconds."""
    deadline = time.monotonic() + BOUND
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not {what} after {BOUND} s"
        time.sleep(0.05)


def start(lazyfs: Lazyfs) -> tuple[subprocess.Popen[bytes], str, int]:
    """``lazyfs run busybox -- sleep 1000`` once runc has it running: the run, the
    container id, the pid of the container's ``sleep``."""
    run = subprocess.Popen(
        lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sleep", "1000"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    found: list[str] = []

    def running() -> bool:
        assert run.poll() is None, run.communicate()
        listed = json.loads(lazyfs("ps", "--json").stdout)
        found[:] = [c["container_id"] for c in listed]
        state = runc_state(lazyfs.work_dir, found[0]) if found else None
        return state is not None and state["status"] == "running"

    poll("running", running)
    (cid,) = found
    state = runc_state(lazyfs.work_dir, cid)
    assert state is not None
    return run, cid, int(state["pid"])  # type: ignore[call-overload]


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie has too: only its parent is left to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def nothing_left(lazyfs: Lazyfs, cid: str, pids: list[int]) -> None:
    work = lazyfs.work_dir
    assert json.loads(lazyfs("ps", "--json").stdout) == []
    assert list((work / "provisioner" / "containers").iterdir()) == []
    assert not (work / "runc" / cid).exists()
    assert runc_state(work, cid) is None
    assert mounts_under(work.parent) == []
    for pid in pids:
        poll(f"ended: {pid}", lambda pid=pid: gone(pid))


def test_force_kills_what_a_killed_run_left_running(lazyfs: Lazyfs) -> None:
    run, cid, sleeper = start(lazyfs)
    supervisor = parent_of(sleeper)  # runc run, which clones the container's init
    try:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=BOUND)
        # Its parent-death SIGTERM reached runc, which passed it on: sleep ignores it.
        assert runc_state(lazyfs.work_dir, cid)["status"] == "running"  # type: ignore[index]
        refused = lazyfs("destroy", cid, check=False)
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1 and "still running (runc)" in refused.stderr

        done = lazyfs("destroy", "--force", cid, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        nothing_left(lazyfs, cid, [sleeper, supervisor])
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def test_force_while_its_run_is_alive_ends_the_run_with_137(lazyfs: Lazyfs) -> None:
    run, cid, sleeper = start(lazyfs)
    try:
        done = lazyfs("destroy", "--force", cid, check=False)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        # The run saw its container killed, as docker run after docker rm -f.
        _, err = run.communicate(timeout=BOUND)
        assert (run.returncode, err) == (137, b"")
        nothing_left(lazyfs, cid, [sleeper])
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def test_force_of_no_container_is_not_found(lazyfs: Lazyfs) -> None:
    refused = lazyfs("destroy", "--force", "nothing-here", check=False)
    assert refused.returncode == 1
    assert refused.stderr == "lazyfs: container nothing-here is not provisioned\n"
