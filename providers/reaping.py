"""Children a process starts and forgets: reaped in a thread, so none stays a zombie."""

from __future__ import annotations

import contextlib
import os
import threading


def reap_later(pid: int) -> None:
    """Wait for the child ``pid`` in a daemon thread: it leaves no zombie when it ends."""
    threading.Thread(target=_reap, args=(pid,), name=f"reap-{pid}", daemon=True).start()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
