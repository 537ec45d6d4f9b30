"""A mount point inside a stopped mount: `lazyfs mount` alone lists it without waiting for
it, and `lazyfs umount` of it says what is wrong instead of waiting for ever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lazyfs.fs.mount import is_mounted
from lazyfs.fs.writable_names import TIMEOUT
from lazyfs.provision.devmount import record_dir
from providers.mountinfo import mount_point_set
from tests.support.lazyfs_cli import Lazyfs, mount_process_alive, one_line_error
from tests.support.mount_records import mount_record

pytestmark = pytest.mark.integration


@contextmanager
def outer_mount(lazyfs: Lazyfs, tmp_path: Path, *flags: str) -> Iterator[tuple[Path, int]]:
    """busybox mounted at ``tmp_path/outer`` (``flags``: the mount's), and its process: for
    the test to stop. Continued, taken down and seen gone afterwards, also on failure."""
    outer = tmp_path / "outer"
    outer.mkdir()
    pid = json.loads(lazyfs("mount", *flags, "busybox", str(outer)).stdout)["pid"]
    try:
        yield outer, pid
    finally:
        if mount_process_alive(pid):
            os.kill(pid, signal.SIGCONT)
        lazyfs("umount", str(outer), check=False, timeout=120)
        if mount_process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not is_mounted(outer) and not record_dir(lazyfs.work_dir, outer).exists()


def test_a_mount_point_inside_a_stopped_mount_is_listed_and_the_listing_returns(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    with outer_mount(lazyfs, tmp_path) as (outer, pid):
        (outer / "etc").stat()  # the kernel keeps what it learnt: no stat asks it again
        # A mount recorded inside it, and gone: a name the kernel never asked the mount
        # about, so following the path to it asks the stopped process (and waits for ever).
        inner = outer / "etc" / "never-looked-up" / "mnt"
        mount_record(lazyfs.work_dir, inner)
        os.kill(pid, signal.SIGSTOP)
        listing = lazyfs("mount", "--json", timeout=60)
        states = [(item["mountpoint"], item["mount"]) for item in json.loads(listing.stdout)]
        assert states == [(str(outer), "not answering"), (str(inner), "not mounted")]


def test_a_record_inside_a_stopped_mount_is_forgotten_by_umount(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    with outer_mount(lazyfs, tmp_path) as (outer, pid):
        (outer / "etc").stat()  # the kernel keeps what it learnt: no stat asks it again
        # Gone, at a name the kernel never asked the mount about: following the path to
        # it asks the stopped process (before: for ever).
        inner = outer / "etc" / "never-looked-up" / "mnt"
        mount_record(lazyfs.work_dir, inner)
        os.kill(pid, signal.SIGSTOP)
        # The timeout guards against a hang; the fix looks at no path.
        lazyfs("umount", str(inner), timeout=60)
        assert not record_dir(lazyfs.work_dir, inner).exists()
        # The stopped mount is left as it was.
        assert outer in mount_point_set() and record_dir(lazyfs.work_dir, outer).exists()
        assert mount_process_alive(pid)


def test_umount_inside_a_stopped_mount_names_it_then_takes_down_what_it_held(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    # Writable: the kernel keeps its answers only TIMEOUT, as most FUSE filesystems do.
    with outer_mount(lazyfs, tmp_path, "--writable") as (outer, pid):
        mid = outer / "mid"
        inner = mid / "inner"
        mid.mkdir()
        try:
            # A mount in it, not lazyfs' (it does not answer either: through no fault of
            # its own), and in that one, one recorded (as root, lazyfs mounts in no FUSE
            # mount: a user's mount, or one older than that check).
            subprocess.run(["mount", "-t", "tmpfs", "lazyfs-mid", str(mid)], check=True)
            inner.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "lazyfs-inner", str(inner)], check=True)
            mount_record(lazyfs.work_dir, inner)
            os.kill(pid, signal.SIGSTOP)
            # Past the answers' lifetime: every look through the outer mount asks its
            # stopped process now, as once it has been stopped for a while.
            time.sleep(2 * TIMEOUT)
            # The timeout guards against a hang (before: for ever); the fix needs seconds.
            refused = lazyfs("umount", str(inner), check=False, timeout=90)
            assert one_line_error(refused) == (
                f"lazyfs: cannot unmount {inner}: the mount it lies in, {outer}, is not"
                " answering (its process is stopped or stuck): continue that process, or"
                f" unmount {outer} first"
            )
            # Still mounted, so still recorded (the table as text: a look would wait).
            assert inner in mount_point_set() and record_dir(lazyfs.work_dir, inner).exists()
            # What it says to do: the stopped mount comes down, and what it held with it.
            lazyfs("umount", str(outer), timeout=120)
            assert not {outer, mid, inner} & mount_point_set()
            assert not mount_process_alive(pid)
            lazyfs("umount", str(inner), timeout=60)
            assert not record_dir(lazyfs.work_dir, inner).exists()
        finally:
            if mount_process_alive(pid):
                os.kill(pid, signal.SIGCONT)
            lazyfs("umount", str(inner), check=False, timeout=120)
            for point in (inner, mid):
                if point in mount_point_set():
                    subprocess.run(["umount", "-l", str(point)], check=False)


def test_umount_through_a_symlink_into_a_stopped_mount_names_it(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    with outer_mount(lazyfs, tmp_path) as (outer, pid):
        (outer / "etc").stat()  # the kernel keeps what it learnt: no stat asks it again
        # The path given leads into the stopped mount only through a symlink, to a name
        # the kernel never asked it about: following it asks the stopped process.
        link = tmp_path / "link"
        link.symlink_to(outer / "etc" / "never-looked-up")
        os.kill(pid, signal.SIGSTOP)
        # The timeout guards against a hang (before: for ever, waiting on the mount the
        # path given lies in, /tmp's, which answers); the fix needs seconds.
        refused = lazyfs("umount", str(link / "mnt"), check=False, timeout=90)
        assert one_line_error(refused) == (
            f"lazyfs: cannot look up {link / 'mnt'}: the mount it lies in, {outer}, is not"
            f" answering (its process is stopped or stuck): continue that process, or"
            f" unmount {outer} first"
        )
        assert record_dir(lazyfs.work_dir, outer).exists() and mount_process_alive(pid)
