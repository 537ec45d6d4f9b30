"""``unmount`` signals only a process it can tell is the mount process.

Real processes whose command lines the tests control: one that names the
mount module and mount point (the mount process: terminated when it does
not exit), one that empties its command line while alive (not to be
touched), a zombie child (reaped, as an exec'd mount process that has
just exited is), and a zombie that is not ours (the mount process after its
mounting command exited, when what adopts it is slow to reap it, or never
does).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazyfs.fs import mount_peers
from lazyfs.fs.unmount import MOUNT_MODULE, unmount

# Empties its own /proc/PID/cmdline with PR_SET_MM_MAP (no capability needed
# when the executable is left as it is): the argument area made zero bytes
# long. Then says so, and lives until its stdin closes.
EMPTY_CMDLINE = r"""
import ctypes, sys
stat = open("/proc/self/stat", "rb").read().rsplit(b")", 1)[1].split()
field = lambda n: int(stat[n - 3])  # proc(5) numbering
names = ("start_code end_code start_data end_data start_brk brk start_stack "
         "arg_start arg_end env_start env_end").split()
class MmMap(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in names] + [
        ("auxv", ctypes.c_void_p), ("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]
libc = ctypes.CDLL(None, use_errno=True)
libc.sbrk.restype = ctypes.c_void_p
mm = MmMap(field(26), field(27), field(45), field(46), field(47), libc.sbrk(0), field(28),
           field(48), field(48), field(50), field(51), None, 0, 0xFFFFFFFF)
PR_SET_MM, PR_SET_MM_MAP = 35, 14
if libc.prctl(PR_SET_MM, PR_SET_MM_MAP, ctypes.byref(mm), ctypes.sizeof(mm), 0) != 0:
    sys.exit(f"prctl(PR_SET_MM_MAP) failed: errno {ctypes.get_errno()}")
print("emptied", flush=True)
sys.stdin.read()
"""


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def test_a_live_process_with_an_empty_command_line_is_not_signalled(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    # Its command line named the mount process's module and mount point until it emptied it.
    argv = [sys.executable, "-c", EMPTY_CMDLINE, MOUNT_MODULE, str(mountpoint)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == b"emptied\n", child.wait()
        assert cmdline(child.pid) == b""
        unmount(mountpoint, pid=child.pid, timeout=0.05)
        assert child.poll() is None  # neither waited to death nor killed
        child.stdin.close()
        assert child.wait() == 0  # it ended on its own, when told to
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_the_mount_process_is_still_terminated_when_it_stays(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    code = "import sys; print('up', flush=True); sys.stdin.read()"
    argv = [sys.executable, "-c", code, MOUNT_MODULE, str(mountpoint)]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"up\n"  # exec'd: its command line is its own
        unmount(mountpoint, pid=child.pid, timeout=0.05)
        # unmount reaped it: its status is gone with it, so ask that it is gone.
        assert not Path(f"/proc/{child.pid}").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_an_exited_child_is_reaped_without_being_told_apart(tmp_path: Path) -> None:
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], dict(os.environ))
    try:
        # Wait for it to exit, leaving it a zombie: no command line, no memory.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        assert cmdline(pid) == b""
        unmount(tmp_path, pid=pid, timeout=10)
        assert not Path(f"/proc/{pid}").exists()
    finally:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # reaped by unmount, as it should be
        else:
            raise AssertionError(f"unmount left the zombie {pid} unreaped")


# Starts the mount process (its command line says so), which exits at once,
# says its pid, and lives on without reaping it until its stdin closes.
NEVER_REAPS = r"""
import os, subprocess, sys
mount = subprocess.Popen([sys.executable, "-c", "pass", *sys.argv[1:]])
os.waitid(os.P_PID, mount.pid, os.WEXITED | os.WNOWAIT)  # a zombie now, and stays one
print(mount.pid, flush=True)
sys.stdin.read()
"""


def test_a_mount_process_that_exited_is_gone_though_nobody_reaps_it(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    argv = [sys.executable, "-c", NEVER_REAPS, MOUNT_MODULE, str(mountpoint)]
    parent = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None and parent.stdin is not None
        pid = int(parent.stdout.readline())
        # Ended at once: a bound on a hang, not a timing (it stays a zombie past any).
        assert mount_peers.wait_ended(pid, 30)
        assert not mount_peers.alive(pid)  # as a mount server's stop counts it
        unmount(mountpoint, pid=pid, timeout=30)
        assert Path(f"/proc/{pid}").exists()  # a zombie still, its parent's to reap
        parent.stdin.close()
        assert parent.wait() == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# Its main thread ends (the leader shows as a zombie) while another runs on until stdin closes.
THREAD_LIVES_ON = r"""
import ctypes, sys, threading
threading.Thread(target=sys.stdin.read).start()
print("up", flush=True)
ctypes.CDLL(None).pthread_exit(None)  # this thread alone
"""

# Starts THREAD_LIVES_ON, says its pid, and closes its stdin once the test closes ours.
HOLDS = r"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
assert child.stdout.readline() == b"up\n"
print(child.pid, flush=True)
sys.stdin.read()
child.stdin.close()
sys.exit(child.wait())
"""


def test_a_process_whose_first_thread_ended_is_not_gone_while_another_runs() -> None:
    parent = subprocess.Popen([sys.executable, "-c", HOLDS, THREAD_LIVES_ON],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert parent.stdout is not None and parent.stdin is not None
        pid = int(parent.stdout.readline())
        status = Path(f"/proc/{pid}/status")
        deadline = time.monotonic() + 30  # a bound on a hang
        while "State:\tZ" not in status.read_text():
            assert time.monotonic() < deadline, status.read_text()
            time.sleep(0.01)
        assert "Threads:\t2" in status.read_text()
        assert not mount_peers.wait_ended(pid, 0.2)  # still running code, holding its files
        assert mount_peers.alive(pid)
        parent.stdin.close()
        assert parent.wait(timeout=30) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_another_user_s_process_is_not_taken_for_an_ended_one() -> None:
    """Not root, the signal check meets EPERM: the process is there, and it runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to become another user")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's result comes through the pipe)
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            answer = f"{mount_peers.exited(1)} {mount_peers.alive(1)}"
        except BaseException as error:  # told to the parent, whatever it is
            answer = repr(error)
        finally:
            try:
                os.write(write, answer.encode())
            finally:
                os._exit(0)  # never back into pytest
    os.close(write)
    ready: list[int] = []
    try:
        ready, _, _ = select.select([read], [], [], 30)  # a bound on a hang
        answer = os.read(read, 4096).decode() if ready else "no answer"
    finally:
        os.close(read)
        if not ready:
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    assert answer == "False True"
