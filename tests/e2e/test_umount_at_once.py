"""Two ``lazyfs umount``s of one mount at once: one takes it down, the other says it is
in progress (before, both said they had taken it down).

Both found its record and both said they had unmounted it. The test holds the
first as it reads the mount's pid, on cue (an audit hook on the file's open), while
the second starts and comes to the mount point's lock, or to its end if it takes none.
"""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

import pytest

from lazyfs.fs.mount import is_mounted
from lazyfs.provision.devmount import record_dir
from tests.support.lazyfs_cli import Lazyfs, one_line_error
from tests.support.on_cue import cleaned_up, start

pytestmark = pytest.mark.integration


def test_a_second_umount_at_once_is_told_one_is_in_progress(lazyfs: Lazyfs, tmp_path: Path) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    lazyfs("mount", "busybox", str(point))
    first_told, first_reached = os.pipe()
    first_go, first_wait = os.pipe()
    second_told, second_reached = os.pipe()
    key = record_dir(lazyfs.work_dir, point).name
    first = start(lazyfs, f"{key}/pid", first_reached, first_go, "umount", str(point))
    second = None
    try:
        ready = select.select([first_told], [], [], 120)[0]
        assert ready, "the first umount never read the mount's pid"
        assert os.read(first_told, 1) == b"x"
        second = start(lazyfs, "/mount:", second_reached, -1, "umount", str(point))
        assert second.stdout is not None
        # At the lock, which the first holds: or at its end, if it takes none.
        select.select([second_told, second.stdout.fileno()], [], [], 120)
        os.write(first_wait, b"x")
        _, first_err = first.communicate(timeout=120)
        assert first.returncode == 0, first_err
        second_out, second_err = second.communicate(timeout=120)
        result = subprocess.CompletedProcess(second.args, second.returncode, second_out, second_err)
        assert second.returncode == 1, second_err  # before: 0, as if it had unmounted it
        said = f"lazyfs: a mount or umount at {point} is in progress: try again once it is done"
        assert one_line_error(result) == said
        assert not is_mounted(point)
    finally:
        fds = (first_told, first_reached, first_go, first_wait, second_told, second_reached)
        cleaned_up((first, second), fds)
        if is_mounted(point):
            lazyfs("umount", str(point), check=False)
