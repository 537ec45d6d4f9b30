"""Ending a server process a test started (asked first, killed if it does not go); zombies."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM ``process``, SIGKILL it if it is still there after ``timeout``; reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def zombie(pid: int | str) -> bool:
    """Whether process ``pid`` has ended and waits to be reaped (or is gone altogether)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def reaped(pid: int, guard: float = 60.0) -> bool:
    """Whether ``pid`` was reaped (its /proc entry gone), soon; ``guard`` bounds a hang."""
    deadline = time.monotonic() + guard
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.02)
    return False
