"""``lazyfs run`` passes a signal on to runc only while runc runs (``runc_signals.pass_on``).

Through runc's pidfd, an ended runc, reaped or not yet, gets nothing and the signal
does not count as passed on (the container ended by itself); without a pidfd (an old
kernel), by pid, as ``Popen.send_signal`` sends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from lazyfs.provision.runc_signals import pass_on


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("by_pidfd", [True, False], ids=["pidfd", "pid"])
def test_a_running_runc_is_sent_the_signal(child: subprocess.Popen[bytes], by_pidfd: bool) -> None:
    pidfd = [os.pidfd_open(child.pid)] if by_pidfd else []
    try:
        assert pass_on(child, pidfd, signal.SIGTERM)
        assert child.wait() == -signal.SIGTERM
    finally:
        for fd in pidfd:
            os.close(fd)


@pytest.mark.parametrize("by_pidfd", [True, False], ids=["pidfd", "pid"])
def test_an_ended_runc_not_reaped_yet_is_sent_nothing(by_pidfd: bool) -> None:
    process = subprocess.Popen(["true"])
    pidfd = [os.pidfd_open(process.pid)] if by_pidfd else []
    try:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # ended: a zombie now
        assert not pass_on(process, pidfd, signal.SIGTERM)
        assert process.wait() == 0
        assert not pass_on(process, pidfd, signal.SIGTERM)  # reaped
    finally:
        for fd in pidfd:
            os.close(fd)
        process.wait()


def test_an_ended_runc_is_sent_nothing_by_pid_while_wait_holds_popens_lock() -> None:
    process = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # ended: a zombie now
        with process._waitpid_lock:  # type: ignore[attr-defined]  # as inside ``wait``
            assert not pass_on(process, [], signal.SIGTERM)
    finally:
        process.wait()
