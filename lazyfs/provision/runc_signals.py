"""How ``lazyfs run`` hands signals and the terminal to runc (``runtime.run_bundle``).

What is passed on to runc, which passes it on to the container, as docker
run's --sig-proxy does; what stops a run when it comes before runc runs; the
parent-death signal runc gets should ``lazyfs run`` die; and the terminal's
foreground, which runc takes while it runs when it reads the caller's terminal.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable

# Forwarded to runc, which passes them on to the container (as docker run's --sig-proxy):
# all a process can catch but its own (CHLD, PIPE, URG; TTIN, TTOU: its use of the terminal),
# WINCH (runc gets it from the terminal under -t, and passes it to no container) and the
# faults a handler would return into. `run` ends when the container does. The STOPPING
# ones stop a run they come to before runc runs, as the caller's handlers note them.
_KEPT = "KILL STOP CHLD PIPE URG TTIN TTOU WINCH SEGV BUS FPE ILL"
FORWARDED = sorted(signal.valid_signals() - {signal.Signals["SIG" + n] for n in _KEPT.split()})
STOPPING = {signal.Signals["SIG" + n] for n in ("INT", "TERM", "HUP", "QUIT", "USR1", "USR2")}
# A hang-up the caller ignores (nohup) stays ignored, as run_trio has it.
NOHUP = (signal.SIGHUP, signal.SIG_IGN)

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def term_when_parent_dies(parent: int, tty: int | None) -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM to the child when ``parent`` dies, whatever kills it. Not
    SIGKILL: runc is the container's parent but not its end (the container would outlive
    it, unsupervised); SIGTERM reaches runc's forwarding instead. The child's group is
    put in the foreground of ``tty``, if given, before it can read it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # died before the signal was armed
            os._exit(128 + signal.SIGTERM)
        if tty is not None:
            to_foreground(tty, os.getpgrp())

    return arm


def foreground_tty() -> int | None:
    """The first of fds 0-2 that is this process's terminal, its group in the foreground."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):  # not a terminal, or not this process's
            if os.tcgetpgrp(fd) == os.getpgrp():
                return fd
    return None


def to_foreground(tty: int, group: int) -> None:
    """Put ``group`` in the foreground of ``tty``, as a shell does from the background:
    with SIGTTOU blocked, which would stop the caller."""
    was = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        with contextlib.suppress(OSError):  # the terminal is gone, or no longer this one's
            os.tcsetpgrp(tty, group)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, was)
