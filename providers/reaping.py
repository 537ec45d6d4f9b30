"""Other processes: children started and forgotten, reaped in a thread so none stays a
zombie, and whether a process is there at all; the signals a detached helper starts
with their default ending."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

# What a detached helper (cache daemon, mount server, mount process, adopter) starts
# with at their default, whatever its starter ignores (``posix_spawn``'s ``setsigdef``):
# an ignored signal is inherited across exec, and a command that has handed over its
# container ignores these to its end (``lazyfs.cli_run.ignore_stops``).
SPAWN_DEFAULTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                  signal.SIGUSR1, signal.SIGUSR2)  # fmt: skip


def reap_later(pid: int) -> None:
    """Wait for the child ``pid`` in a daemon thread: it leaves no zombie when it ends."""
    threading.Thread(target=_reap, args=(pid,), name=f"reap-{pid}", daemon=True).start()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def pid_exists(pid: int) -> bool:
    """Whether process ``pid`` is there in this pid namespace, a zombie or another user's too."""
    if pid <= 0:
        return False  # kill(2) would take 0 and -N for process groups
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: past pid_t, so none
        return False
    except PermissionError:
        return True  # another user's: it is there
    return True
