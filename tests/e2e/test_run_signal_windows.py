"""SIGTERM at any point of ``lazyfs run`` leaves no container behind.

An agent stops a container by sending its ``lazyfs run`` SIGTERM, and does
not choose the moment. Provisioning, runc's run and the destroy each had
their handling; these tests send the signal on cue in the gaps between
them: after the provision, while runc is being started, after runc ended,
and during the destroy.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import REPO, Lazyfs

pytestmark = pytest.mark.integration

# Runs ``python -m lazyfs`` after planting an audit hook that sends this
# process SIGTERM the first time an event named by the cue happens (once
# runc's state is being deleted, if the cue says "after"): a signal at that
# point of the run, on cue rather than by timing.
TERM_ON_CUE = """
import os, runpy, signal, sys

event, needle, after = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1) == "after"
armed, sent = [not after], []

def hook(name, args):
    if name == "subprocess.Popen" and "'delete', '--force'" in repr(args):
        armed.append(True)
    if sent or not armed[-1] or name != event or needle not in repr(args):
        return
    sent.append(name)
    os.kill(os.getpid(), signal.SIGTERM)

sys.addaudithook(hook)
sys.argv = ["lazyfs", *sys.argv[1:]]
runpy.run_module("lazyfs", run_name="__main__", alter_sys=True)
"""


# Runs ``python -m lazyfs`` with ``os.waitpid`` sending this process SIGTERM just as it
# has reaped runc, before ``Popen`` knows: the handler runs then, with runc's pid free to
# be another process's. ``os.kill`` notes every signal sent to that pid afterwards.
TERM_AS_RUNC_IS_REAPED = """
import os, runpy, signal, sys

real_waitpid, real_kill = os.waitpid, os.kill
runc, reaped, late = [], [], []

def hook(name, args):
    if name == "subprocess.Popen" and "'run', '--bundle'" in repr(args):
        runc.append(True)

def waitpid(pid, options):
    got = real_waitpid(pid, options)
    if runc and not reaped and pid > 0 and got[0] == pid:
        reaped.append(pid)
        real_kill(os.getpid(), signal.SIGTERM)
    return got

def kill(pid, sig):
    if pid in reaped:
        late.append(sig)
    return real_kill(pid, sig)

sys.addaudithook(hook)
os.waitpid, os.kill = waitpid, kill
sys.argv = ["lazyfs", *sys.argv[1:]]
try:
    runpy.run_module("lazyfs", run_name="__main__", alter_sys=True)
finally:
    print(f"reaped {len(reaped)}, signals to its pid after: {late}", file=sys.stderr)
"""


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def runc_containers(work: Path) -> str:
    listed = subprocess.run(
        ["runc", "--root", str(work / "runc"), "list", "-q"],
        capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return listed.stdout


def run_with_term(
    lazyfs: Lazyfs, event: str, needle: str, after: bool = False
) -> subprocess.CompletedProcess[str]:
    """``lazyfs run`` of busybox on a copy rootfs, sent SIGTERM at the cue (``after``: once
    runc's state is being deleted)."""
    argv = lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", "echo ran")
    return subprocess.run(
        [sys.executable, "-c", TERM_ON_CUE, event, needle, "after" if after else "", *argv[3:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        # Provisioned and the bundle written; runc's state directory is made next.
        ("os.mkdir", "/runc'"),
        # runc is being started: it is killed before it has made anything.
        ("subprocess.Popen", "'run', '--bundle'"),
    ],
)
def test_a_term_before_the_container_runs_stops_run_and_destroys(
    lazyfs: Lazyfs, event: str, needle: str
) -> None:
    result = run_with_term(lazyfs, event, needle)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "Traceback" not in result.stderr
    assert "ran" not in result.stdout
    assert containers(lazyfs.work_dir) == []
    assert runc_containers(lazyfs.work_dir) == ""


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        # runc has ended; its state is deleted next.
        ("subprocess.Popen", "'delete', '--force'"),
        # The destroy takes the store's lock.
        ("open", "gc.lock"),
        # The destroy is removing the rootfs (busybox's first file).
        ("os.remove", "'linuxrc'"),
    ],
)
def test_a_term_after_the_container_ended_lets_the_destroy_finish(
    lazyfs: Lazyfs, event: str, needle: str
) -> None:
    result = run_with_term(lazyfs, event, needle, after=True)
    assert result.stdout == "ran\n"
    assert "Traceback" not in result.stderr
    assert containers(lazyfs.work_dir) == []
    assert runc_containers(lazyfs.work_dir) == ""
    # The container had ended by itself: its status is the command's, as docker run's.
    assert result.returncode == 0, result.stderr


def test_a_term_as_run_takes_its_lock_stops_it_before_the_provision(lazyfs: Lazyfs) -> None:
    result = run_with_term(lazyfs, "open", "/locks/run-")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "Traceback" not in result.stderr
    assert containers(lazyfs.work_dir) == []
    assert lazyfs.stored() == []  # nothing was pulled: it stopped first


def test_a_term_as_runc_is_reaped_is_sent_to_no_process(lazyfs: Lazyfs) -> None:
    argv = lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", "echo ran")
    result = subprocess.run(
        [sys.executable, "-c", TERM_AS_RUNC_IS_REAPED, *argv[3:]],
        capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    # runc's pid may be another process's by then: nothing is sent to it.
    assert "reaped 1, signals to its pid after: []" in result.stderr, result.stderr
    assert result.stdout == "ran\n"
    assert result.returncode == 0, result.stderr  # the container had ended by itself
    assert containers(lazyfs.work_dir) == []
    assert runc_containers(lazyfs.work_dir) == ""


# ``python -m lazyfs`` on a kernel without pidfd_open(2) (before 5.3, or a seccomp filter).
WITHOUT_PIDFD = """
import errno, os, runpy, sys

def pidfd_open(pid, flags=0):
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

os.pidfd_open = pidfd_open
sys.argv = ["lazyfs", *sys.argv[1:]]
runpy.run_module("lazyfs", run_name="__main__", alter_sys=True)
"""


def test_run_works_without_pidfds(lazyfs: Lazyfs) -> None:
    argv = lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", "echo ran")
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PIDFD, *argv[3:]],
        capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr
    assert containers(lazyfs.work_dir) == []
    assert runc_containers(lazyfs.work_dir) == ""
