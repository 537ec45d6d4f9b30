"""Two ``lazyfs mount``s at one mount point at once: one mounts, the other is refused.

Each checks that the mount point is not a mount, then fetches the image
for seconds, then mounts. Both passed the check, both mounted (stacked),
and both served one upper directory. The second now waits for the first,
then finds it mounted. The test holds the first as it writes its record,
on cue (an audit hook on the file's open), while the second starts.
"""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

import pytest

from lazyfs.fs.mount import is_mounted
from tests.support.lazyfs_cli import Lazyfs, one_line_error
from tests.support.on_cue import cleaned_up, start

pytestmark = pytest.mark.integration


def test_a_second_mount_at_the_same_place_waits_and_is_refused(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    first_told, first_reached = os.pipe()
    first_go, first_wait = os.pipe()
    second_told, second_reached = os.pipe()
    lazyfs("pull", "busybox")  # no fetch to wait for: the store's lock is not held
    mount = ("mount", "busybox", str(point), "--writable")
    first = start(lazyfs, "/image.json", first_reached, first_go, *mount)
    second = None
    try:
        # Past its checks, writing its record (bounded: a cue never met fails, not hangs).
        assert select.select([first_told], [], [], 120)[0], "the first never opened its record"
        assert os.read(first_told, 1) == b"x"
        # The second, up to where it would wait for the first: or to its end, if it does not.
        second = start(lazyfs, "mount:", second_reached, -1, *mount)
        assert second.stdout is not None
        ready, _, _ = select.select([second_told, second.stdout.fileno()], [], [], 120)
        os.write(first_wait, b"x")
        _, first_err = first.communicate(timeout=120)
        assert first.returncode == 0, first_err
        second_out, second_err = second.communicate(timeout=120)
        result = subprocess.CompletedProcess(second.args, second.returncode, second_out, second_err)
        assert second.returncode == 1, (ready, second_err)
        assert one_line_error(result) == f"lazyfs: {point} is already a mount point"
        assert is_mounted(point)
        lazyfs("umount", str(point))
        assert not is_mounted(point)  # one mount, gone with one umount
    finally:
        fds = (first_told, first_reached, first_go, first_wait, second_told, second_reached)
        cleaned_up((first, second), fds)
        # What a failing run left mounted (stacked, perhaps) goes with the lazyfs fixture.
