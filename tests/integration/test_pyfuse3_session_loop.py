"""pyfuse3's lean session loop (patch 0003): a task switch only where a handler waits.

A request whose handler answers without waiting is served by the task
that read it, which then reads the next: a run of such requests is served
by one task (pyfuse3's own loop passes each to the next of two).  A
handler that waits hands the reading to another task, so the requests
after it are served meanwhile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest

from tests.support.fuse_mounts import need_fuse

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STATS = 50
HANG = 60.0  # seconds: only a loop that never serves takes that long


class Served:
    """The file system of ``tests.support.session_loop_fs``, mounted at ``point``."""

    def __init__(self, proc: subprocess.Popen[bytes], point: Path, report: Path, notes: int):
        self.proc, self.point, self.report, self.notes = proc, point, report, notes

    def note(self) -> bytes:
        """The next byte the file system wrote to its notify pipe (blocks until it does)."""
        return os.read(self.notes, 1)

    def stop(self) -> list[str]:
        """Unmount; the tasks that served its getattrs, in order."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        # A bound on a hang, not a speed limit: main() must return once unmounted.
        assert self.proc.wait(timeout=HANG) == 0
        return self.report.read_text().split()


@pytest.fixture(params=[1], ids=["min_tasks=1"])
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """The file system, its ``pyfuse3.main`` keeping ``request.param`` idle tasks."""
    need_fuse()
    if not getattr(pyfuse3, "lean_session_loop", False):
        pytest.skip("a pyfuse3 without patch 0003")
    point, report = tmp_path / "m", tmp_path / "report"
    point.mkdir()
    notes, notify = os.pipe()
    module = "tests.support.session_loop_fs"
    argv = [sys.executable, "-m", module, str(point), str(report), str(notify)]
    argv.append(str(request.param))
    proc = subprocess.Popen(argv, cwd=ROOT, pass_fds=[notify])
    os.close(notify)
    try:
        assert os.read(notes, 1) == b"m"
        yield Served(proc, point, report, notes)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # Gone with its process already, unless it died before unmounting.
        subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True, check=False)
        os.close(notes)


def test_requests_answered_without_waiting_are_served_by_one_task(served: Served) -> None:
    for _ in range(STATS):
        os.stat(served.point)
    tasks = served.stop()
    assert len(tasks) >= STATS
    assert len(set(tasks)) == 1


@pytest.mark.parametrize("served", [1, 3], ids=["min_tasks=1", "min_tasks=3"], indirect=True)
def test_a_handler_that_waits_lets_the_next_requests_be_served(served: Served) -> None:
    """``slow``'s lookup waits for a getattr that comes after it: only another task can serve it."""
    found: list[bool] = []
    slow = threading.Thread(target=lambda: found.append((served.point / "slow").exists()))
    slow.daemon = True
    slow.start()
    assert served.note() == b"w"  # slow's handler waits now
    stat = threading.Thread(target=os.stat, args=(served.point,), daemon=True)
    stat.start()
    # Not a speed limit: a loop that served nothing while a handler waits
    # would hang both for good (the fixture's kill then lets them go).
    stat.join(HANG)
    slow.join(HANG)
    assert found == [True]
    for _ in range(STATS):
        os.stat(served.point)
    # It still answers, and stops: with min_tasks > 1 the tasks parked idle by
    # then are woken at the session's end too, or main() never returns.
    assert served.stop()
