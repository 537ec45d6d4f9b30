"""How ``lazyfs run`` hands signals to runc (``runtime.run_bundle``).

What is passed on to runc, which passes it on to the container, as docker
run's --sig-proxy does; what stops a run when it comes before runc runs; what
a terminal sends its foreground group itself; the parent-death signal
runc gets should ``lazyfs run`` die; and how one is sent: to runc itself
(``pass_on``), or to the container by ``runc kill`` (``interrupt``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import termios
from collections.abc import Callable
from pathlib import Path

# Forwarded to runc, which passes them on to the container (as docker run's --sig-proxy):
# all a process can catch but its own (CHLD, PIPE, URG; TTIN, TTOU: its use of the terminal),
# WINCH (runc gets it from the terminal under -t, and passes it to no container) and the
# faults a handler would return into. `run` ends when the container does. The STOPPING
# ones stop a run they come to before runc runs, as the caller's handlers note them.
_KEPT = "KILL STOP CHLD PIPE URG TTIN TTOU WINCH SEGV BUS FPE ILL"
FORWARDED = sorted(signal.valid_signals() - {signal.Signals["SIG" + n] for n in _KEPT.split()})
STOPPING = {signal.Signals["SIG" + n] for n in ("INT", "TERM", "HUP", "QUIT", "USR1", "USR2")}
# What a terminal sends its foreground group (Ctrl-C, Ctrl-\, Ctrl-Z): runc has them
# from it too when it shares the caller's group.
TERMINALS = {signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP}
# A hang-up the caller ignores (nohup) stays ignored, as run_trio has it.
NOHUP = (signal.SIGHUP, signal.SIG_IGN)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def term_when_parent_dies(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM to the child when ``parent`` dies, whatever kills it. Not
    SIGKILL: runc is the container's parent but not its end (the container would outlive
    it, unsupervised); SIGTERM reaches runc's forwarding instead."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # died before the signal was armed
            os._exit(128 + signal.SIGTERM)

    return arm


def from_terminal(tty: int | None) -> bool:
    """Whether a signal of the terminal's own (``TERMINALS``) may have come from it: ``tty``
    is a terminal that sends them (ISIG: not raw, as runc makes it under -t) whose
    foreground is this process's group, which runc shares. A ``kill`` of this process
    alone meanwhile is taken for one: it does not reach the container."""
    if tty is None:
        return False
    try:
        return os.tcgetpgrp(tty) == os.getpgrp() and bool(termios.tcgetattr(tty)[3] & termios.ISIG)
    except (OSError, termios.error):  # not a terminal any more, or not this process's
        return False


def interrupt(state_root: Path, container_id: str, fallback: Callable[[], bool]) -> bool:
    """SIGINT to the container by ``runc kill``; whether it went. Not through ``runc run``:
    with process.terminal it takes SIGINT for a Ctrl-C of its own, resets the terminal and
    exits 0 at once (its tty.go), the container left running. docker run's proxy goes
    through kill as well.

    Where kill fails, ``fallback`` (to runc itself, which passes it on once the container
    runs) is for a container not there yet; one that has ended (``stopped``: runc has not
    reaped it yet) gets nothing. runc is about to end with its status then, which a SIGINT
    to runc would replace with 0. Once runc has deleted the stopped container's state, as
    it ends, no state is there either: that last moment looks as one before the container,
    and is left open.
    """
    killed = _runc(state_root, "kill", container_id, "INT")
    if killed is not None and killed.returncode == 0:
        return True
    if _status(state_root, container_id) == "stopped":
        return False
    return fallback()


def _status(state_root: Path, container_id: str) -> str | None:
    """What ``runc state`` says of the container; None for nothing (no such container)."""
    done = _runc(state_root, "state", container_id)
    try:
        status = json.loads(done.stdout)["status"] if done and done.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        return None
    return status if isinstance(status, str) else None


def _runc(state_root: Path, *args: str) -> subprocess.CompletedProcess[bytes] | None:
    """``runc --root state_root ARGS``, its output captured; None without runc."""
    argv = ["runc", "--root", str(state_root), *args]
    try:
        return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    except OSError:
        return None


def pass_on(runc: subprocess.Popen[bytes], pidfd: list[int], signum: int) -> bool:
    """Send ``signum`` to ``runc``; whether it was still running (an exited runc not reaped
    yet is not: the container ended by itself).

    Through its pidfd: a signal that comes just as ``wait`` reaps runc, before ``Popen``
    knows, would go by pid to whatever process has that pid by then. Without one, by pid.
    """
    if not pidfd:
        # ``wait`` holds Popen's lock as this handler runs: its ``poll`` cannot tell an
        # ended runc, so ask without reaping. A pid reaped as the handler came stays a risk.
        try:
            if os.waitid(os.P_PID, runc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return False
        except ChildProcessError:
            return False  # reaped
        runc.send_signal(signum)
        return runc.returncode is None
    try:
        if os.waitid(os.P_PIDFD, pidfd[0], os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return False
        signal.pidfd_send_signal(pidfd[0], signum)
    except (ChildProcessError, ProcessLookupError):
        return False  # reaped meanwhile
    return True
