"""`lazyfs mount` alone lists a mount point inside a stopped mount without waiting for it."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from lazyfs.fs.mount import is_mounted
from lazyfs.provision.devmount import record_dir
from tests.support.lazyfs_cli import Lazyfs, mount_process_alive
from tests.support.mount_records import mount_record

pytestmark = pytest.mark.integration


def test_a_mount_point_inside_a_stopped_mount_is_listed_and_the_listing_returns(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    outer = tmp_path / "outer"
    outer.mkdir()
    pid = json.loads(lazyfs("mount", "busybox", str(outer)).stdout)["pid"]
    try:
        (outer / "etc").stat()  # the kernel keeps what it learnt: no stat asks it again
        # A mount recorded inside it, and gone: a name the kernel never asked the mount
        # about, so following the path to it asks the stopped process (and waits for ever).
        inner = outer / "etc" / "never-looked-up" / "mnt"
        mount_record(lazyfs.work_dir, inner)
        os.kill(pid, signal.SIGSTOP)
        listing = lazyfs("mount", "--json", timeout=60)
        states = [(item["mountpoint"], item["mount"]) for item in json.loads(listing.stdout)]
        assert states == [(str(outer), "not answering"), (str(inner), "not mounted")]
    finally:
        os.kill(pid, signal.SIGCONT)
        lazyfs("umount", str(outer), check=False, timeout=60)
        if mount_process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not is_mounted(outer) and not record_dir(lazyfs.work_dir, outer).exists()
