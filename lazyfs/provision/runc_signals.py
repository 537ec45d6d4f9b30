"""How ``lazyfs run`` hands signals to runc (``runtime.run_bundle``).

What is passed on to runc, which passes it on to the container, as docker
run's --sig-proxy does; what stops a run when it comes before runc runs; what
a terminal sends its foreground group itself; and the parent-death signal
runc gets should ``lazyfs run`` die.
"""

from __future__ import annotations

import ctypes
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


def interrupt(state_root: Path, container_id: str) -> bool:
    """SIGINT to the container by ``runc kill``; whether it went (not before the container
    exists). Not through ``runc run``: with process.terminal it takes SIGINT for a Ctrl-C
    of its own, resets the terminal and exits 0 at once (its tty.go), the container left
    running. docker run's proxy goes through kill as well."""
    argv = ["runc", "--root", str(state_root), "kill", container_id, "INT"]
    try:
        done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    except OSError:
        return False
    return done.returncode == 0
