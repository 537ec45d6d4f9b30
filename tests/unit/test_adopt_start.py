"""The adopting process starts without running ``ldconfig -p`` (``providers.shared_libs``).

It starts beside every lazy container (``lazyfs.provision.adopt_spawn``),
at the moment the container starts, and loads trio, whose import asks
``ctypes.util.find_library`` for a library: a subprocess of some tens of
milliseconds unless the process put glibc's sonames in place first.
Checked in a fresh interpreter that records every subprocess it starts
while it runs the module as ``python -m`` does (``--help``: it loads it
all, then exits).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import runpy, sys
started = []
def record(event, args):
    if event == "subprocess.Popen":
        started.append(args[0])
sys.addaudithook(record)
sys.argv = ["lazyfs.provision.adopt", "--help"]
try:
    runpy.run_module("lazyfs.provision.adopt", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
assert "trio" in sys.modules, "the check must load trio"
print(repr(started), file=sys.stderr)
"""


def test_the_adopting_process_loads_trio_without_running_ldconfig() -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-c", RUN],
        cwd=ROOT,
        # Run as __main__, it gives its autogroup the least CPU share: its own session's.
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    started = done.stderr.strip().splitlines()[-1]
    assert "ldconfig" not in started, started
