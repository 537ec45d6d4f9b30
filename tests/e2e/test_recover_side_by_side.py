"""`lazyfs recover --keep` asks the kept containers' mounts side by side, as `ps` does.

One after another, each mount whose process is stopped cost the whole wait
for its answer (seconds), and a second such mount was asked only once the
first had been given up on: fifty made `recover` take minutes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs
from tests.support.statfs_calls import asking_statfs

pytestmark = pytest.mark.integration


def test_recover_asks_mounts_that_do_not_answer_side_by_side(lazyfs: Lazyfs) -> None:
    pids = []
    for cid in ("f1", "f2"):
        info = json.loads(lazyfs("provision", cid, "busybox", "--backend", "fuse").stdout)
        rootfs = Path(info["rootfs"])
        pids.append(int((rootfs.parent.parent / "scratch" / rootfs.name / "pid").read_text()))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    stopped = True
    try:
        recover = lazyfs.popen("recover", "--keep", "f1", "f2")
        try:
            # Both stopped mounts are asked at once. One by one, the second is asked
            # only once the first has had its seconds, and is reported broken.
            deadline = time.monotonic() + 30  # bounds a failing test only
            while asking_statfs(recover.pid) < 2:
                assert recover.poll() is None and time.monotonic() < deadline, "never asked"
                time.sleep(0.01)
            for pid in pids:  # both answer now, within their seconds
                os.kill(pid, signal.SIGCONT)
            stopped = False
            out, err = recover.communicate(timeout=60)
        finally:
            recover.kill()
            recover.wait()
        report = json.loads(out)
        assert report["kept"] == ["f1", "f2"], err
        assert not report["broken"] and not report["remounted"], report
    finally:
        if stopped:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
    lazyfs("destroy", "f1")
    lazyfs("destroy", "f2")
