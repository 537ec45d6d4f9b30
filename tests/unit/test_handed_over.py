"""``run_handed_over``: a signal once the work has handed over what it made ends nothing.

``lazyfs provision`` prints its container and marks it complete; a Ctrl-C or
SIGTERM that lands after that (in trio's close, or on the way to exit) made
the command exit 130 or 143, or die by the signal, over a container that
stays: an agent took it for never made, and its mounts leaked. Such a signal
now ends nothing, and the command exits 0. One that lands before still
stops the work, which undoes what it made.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.cli_run import Stopped, run_handed_over
from providers.errors import LazyfsError

ROOT = Path(__file__).resolve().parents[2]
WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
           signal.SIGUSR2)  # fmt: skip


@pytest.fixture(autouse=True)
def _handlers_restored() -> Iterator[None]:
    before = {sig: signal.getsignal(sig) for sig in WATCHED}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


# In a process of its own: the signals' old ending is the process's.
_HANDED_OVER = """
import os, signal
from lazyfs.cli_run import run_handed_over, run_stoppable

async def provisioned():
    # Lands as the work returns: trio's watch hears it after, in its close.
    os.kill(os.getpid(), signal.SIGTERM)
    return "container"

print(run_handed_over(provisioned), flush=True)
# A favour after it may be stopped, and only it: the command goes on.
def publishing():
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)  # a second, as the first is answered: nothing
    print("never", flush=True)

run_stoppable("publishing", publishing)
# And for the rest of the process: a Ctrl-C on the way to exit does nothing.
os.kill(os.getpid(), signal.SIGINT)
os.kill(os.getpid(), signal.SIGTERM)
print("still here", flush=True)
"""


def test_a_signal_once_the_work_is_done_ends_nothing() -> None:
    done = subprocess.run([sys.executable, "-c", _HANDED_OVER], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "container\nstill here\n"), done.stderr
    assert done.stderr.strip().endswith("publishing: stopped by SIGTERM"), done.stderr


def test_a_signal_before_it_is_done_stops_it() -> None:
    async def interrupted() -> str:
        os.kill(os.getpid(), signal.SIGTERM)
        import trio

        await trio.sleep_forever()
        return "never"

    with pytest.raises(Stopped):
        run_handed_over(interrupted)


def test_a_failure_before_it_is_done_leaves_the_handlers_as_they_were() -> None:
    before = {sig: signal.getsignal(sig) for sig in WATCHED}

    async def failing() -> str:
        raise LazyfsError("no room")

    with pytest.raises(LazyfsError):
        run_handed_over(failing)
    assert {sig: signal.getsignal(sig) for sig in WATCHED} == before


_BEFORE_THE_WATCH = """
import os, signal
import lazyfs.cli_run as cli_run

real = cli_run.run_trio

def run_trio(work, **kw):
    os.kill(os.getpid(), signal.SIGTERM)  # heard before trio's watch begins
    return real(work, **kw)

cli_run.run_trio = run_trio
made = []

async def provisioned():
    made.append("container")
    return "container"

try:
    cli_run.run_handed_over(provisioned)
except cli_run.Stopped as stopped:
    print("stopped", stopped, made, flush=True)
"""


def test_a_signal_before_trio_watches_stops_the_work_before_it_starts() -> None:
    done = subprocess.run([sys.executable, "-c", _BEFORE_THE_WATCH], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "stopped SIGTERM []\n"), done.stderr


_FAVOUR_FAILS = """
import os, signal
from lazyfs.cli_run import run_handed_over, run_stoppable

async def provisioned():
    return "container"

print(run_handed_over(provisioned), flush=True)

def publishing():
    raise ValueError("the registry's answer made no sense")

run_stoppable("publishing", publishing)
os.kill(os.getpid(), signal.SIGTERM)  # still ignored after the favour failed
print("still here", flush=True)
"""


def test_a_favour_that_fails_after_the_hand_over_is_a_warning_and_ignores_stops() -> None:
    done = subprocess.run([sys.executable, "-c", _FAVOUR_FAILS], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "container\nstill here\n"), done.stderr
    assert "publishing: failed: the registry's answer made no sense" in done.stderr
