"""``lazyfs`` run with an audit hook that stops it on cue: for tests of two commands at once.

``start`` runs ``python -m lazyfs`` so that at the first ``open`` whose path holds the
cue it writes a byte to fd TOLD and, if WAIT is set, reads one from fd WAIT: the test
knows where the command is, and holds it there, by what it does rather than by timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from tests.support.lazyfs_cli import REPO, Lazyfs

ON_CUE = """
import os, runpy, sys

cue, told, wait = sys.argv.pop(1), int(sys.argv.pop(1)), int(sys.argv.pop(1))
seen = []

def hook(name, args):
    if seen or name != "open" or not isinstance(args[0], str) or cue not in args[0]:
        return
    seen.append(1)
    os.write(told, b"x")
    if wait >= 0:
        os.read(wait, 1)

sys.addaudithook(hook)
sys.argv = ["lazyfs", *sys.argv[1:]]
runpy.run_module("lazyfs", run_name="__main__", alter_sys=True)
"""


def start(lazyfs: Lazyfs, cue: str, told: int, wait: int, *args: str) -> subprocess.Popen[str]:
    argv = lazyfs.argv(*args)
    return subprocess.Popen(
        [sys.executable, "-c", ON_CUE, cue, str(told), str(wait), *argv[3:]],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=[fd for fd in (told, wait) if fd >= 0],
    )


def cleaned_up(processes: Sequence[subprocess.Popen[str] | None], fds: Sequence[int]) -> None:
    """A test's end, whatever it came to: ``processes`` still running killed and reaped,
    its pipes' ``fds`` closed."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
            process.communicate()
    for fd in fds:
        os.close(fd)
