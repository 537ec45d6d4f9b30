"""``lazyfs run`` passes every signal it can on to its container, as docker run's
--sig-proxy does, and each reaches the container once.

A signal that would stop ``run`` before the container runs (SIGQUIT, SIGUSR1,
SIGUSR2 as SIGTERM) stops it cleanly: nothing is left behind. runc has a
process group of its own, so a signal to ``run``'s group (what Ctrl-C is)
reaches the container through ``run`` alone, not also through runc.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.lazyfs_cli import REPO, Lazyfs

pytestmark = pytest.mark.integration


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def ps_rows(lazyfs: Lazyfs) -> list[str]:
    """``lazyfs ps`` without its header."""
    return lazyfs("ps").stdout.splitlines()[1:]


def start(lazyfs: Lazyfs, script: str, *, session: bool = False) -> subprocess.Popen[bytes]:
    """``lazyfs run`` of ``sh -c script`` on a copy rootfs, once the container said "up"."""
    run = subprocess.Popen(
        lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", script),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        start_new_session=session,
    )
    assert run.stdout is not None
    line = run.stdout.readline()
    assert line == b"up\n", run.communicate(timeout=60)
    return run


@pytest.mark.parametrize(
    "sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGALRM, signal.SIGRTMIN + 2]
)
def test_a_signal_reaches_the_container_and_run_ends_with_its_status(
    lazyfs: Lazyfs, sig: int
) -> None:
    # By number: the container's shell names real-time signals its own way.
    script = f'trap "echo got {int(sig)}; exit 7" {int(sig)}; echo up; sleep 1000 & wait'
    run = start(lazyfs, script)
    run.send_signal(sig)
    out, err = run.communicate(timeout=60)
    assert (run.returncode, out, err) == (7, f"got {int(sig)}\n".encode(), b"")
    assert containers(lazyfs.work_dir) == []
    assert ps_rows(lazyfs) == []


def test_a_signal_to_runs_process_group_reaches_the_container_once(lazyfs: Lazyfs) -> None:
    # Each SIGINT says so; SIGUSR1, sent to run alone once the first was told, ends it:
    # by then any second copy of the SIGINT was sent before it.
    script = (
        'trap "echo got INT" INT; trap "echo done; exit 4" USR1; echo up;'
        " while :; do sleep 1000 & wait; done"
    )
    run = start(lazyfs, script, session=True)
    try:
        os.killpg(run.pid, signal.SIGINT)  # as the terminal sends Ctrl-C to its job
        assert run.stdout is not None
        assert run.stdout.readline() == b"got INT\n"
        run.send_signal(signal.SIGUSR1)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert (run.returncode, out, err) == (4, b"done\n", b"")
    assert containers(lazyfs.work_dir) == []


# Runs ``python -m lazyfs`` after planting an audit hook that sends this process the
# signal named first the first time an event named by the cue happens: a signal at
# that point of the run, on cue rather than by timing.
SIGNAL_ON_CUE = """
import os, runpy, signal, sys

sig = signal.Signals[sys.argv.pop(1)]
event, needle = sys.argv.pop(1), sys.argv.pop(1)
sent = []

def hook(name, args):
    if sent or name != event or needle not in repr(args):
        return
    sent.append(name)
    os.kill(os.getpid(), sig)

sys.addaudithook(hook)
sys.argv = ["lazyfs", *sys.argv[1:]]
runpy.run_module("lazyfs", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2])
@pytest.mark.parametrize(
    ("event", "needle"),
    [
        # The provision: the image's first layer is being unpacked into the store.
        ("os.mkdir", "/docker/layers/"),
        # Provisioned and the bundle written; runc's state directory is made next.
        ("os.mkdir", "/runc'"),
        # runc is being started: it is killed before it has made anything.
        ("subprocess.Popen", "'run', '--bundle'"),
    ],
)
def test_a_signal_before_the_container_runs_stops_run_and_destroys(
    lazyfs: Lazyfs, sig: signal.Signals, event: str, needle: str
) -> None:
    argv = lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", "echo ran")
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_ON_CUE, sig.name, event, needle, *argv[3:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 128 + sig, result.stderr
    assert result.stderr == f"lazyfs: stopped by {sig.name}\n"
    assert "ran" not in result.stdout
    assert containers(lazyfs.work_dir) == []
    assert ps_rows(lazyfs) == []


def test_ctrl_c_on_a_terminal_without_t_reaches_the_container_once(lazyfs: Lazyfs) -> None:
    # run's terminal is a pty it controls; the container reads a line from it first, as
    # runc copies stdin from there: runc stays in run's group, the terminal's foreground,
    # and has the Ctrl-C from the terminal itself, which run does not pass on again.
    script = (
        'trap "echo got INT" INT; trap "echo done; exit 4" USR1; read line; echo "up $line";'
        " while :; do sleep 1000 & wait; done"
    )
    argv = lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", script)
    main, tty = pty.openpty()
    termios.tcsetattr(tty, termios.TCSANOW, _no_echo(termios.tcgetattr(tty)))
    run = subprocess.Popen(
        argv,
        stdin=tty,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(tty)
    try:
        assert run.stdout is not None
        os.write(main, b"hello\n")
        assert _line(run.stdout) == b"up hello\n"
        os.write(main, b"\x03")  # Ctrl-C, as the terminal's line discipline takes it
        assert _line(run.stdout) == b"got INT\n"
        run.send_signal(signal.SIGUSR1)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        os.close(main)
    assert (run.returncode, out, err) == (4, b"done\n", b"")
    assert containers(lazyfs.work_dir) == []


def _no_echo(attrs: list[Any]) -> list[Any]:
    attrs[3] &= ~termios.ECHO  # lflag: what is typed is not written back
    return attrs


def _line(stream: IO[bytes]) -> bytes:
    """A line of ``stream``; fails, rather than hangs, once a minute passed without one."""
    assert select.select([stream], [], [], 60)[0], "nothing came: a stopped runc?"
    return stream.readline()
