"""recover --keep revives a writable fuse rootfs whose mount process died, writes and all."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from backends.mounts import mounts_under
from tests.support.fuse_mounts import kill_mount_process
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration


def write_into(rootfs: Path) -> None:
    """What a container writes: new files, changed, removed and renamed lower ones."""
    (rootfs / "etc" / "motd").write_text("changed by the container\n")
    (rootfs / "root" / "notes").write_text("kept across a restart\n")
    (rootfs / "root" / "made" / "deeper").mkdir(parents=True)
    os.link(rootfs / "root" / "notes", rootfs / "root" / "made" / "notes-link")
    os.chmod(rootfs / "bin" / "busybox", 0o700)  # a metacopy: its bytes stay in the layer
    os.rename(rootfs / "sbin", rootfs / "sbin-moved")  # a lower directory
    os.unlink(rootfs / "usr" / "bin" / os.listdir(rootfs / "usr" / "bin")[0])
    os.symlink("/etc/motd", rootfs / "root" / "motd-link")


def test_a_writable_fuse_rootfs_comes_back_with_its_writes(lazyfs: Lazyfs) -> None:
    out = json.loads(lazyfs("provision", "rw", "busybox", "--backend", "fuse", "--writable").stdout)
    rootfs = Path(out["rootfs"])
    try:
        usr_bin = sorted(os.listdir(rootfs / "usr" / "bin"))
        write_into(rootfs)
        busybox = (rootfs / "bin" / "busybox").read_bytes()
        kill_mount_process(rootfs)
        with pytest.raises(OSError) as caught:
            (rootfs / "never-looked-up").stat()  # a lookup: no cached entry answers it
        assert caught.value.errno == errno.ENOTCONN

        report = json.loads(lazyfs("recover", "--keep", "rw").stdout)
        assert report["kept"] == ["rw"] and report["remounted"] == ["rw"]
        assert report["broken"] == {} and report["destroyed"] == []

        assert (rootfs / "etc" / "motd").read_text() == "changed by the container\n"
        assert (rootfs / "root" / "notes").read_text() == "kept across a restart\n"
        notes, link = os.stat(rootfs / "root" / "notes"), os.stat(rootfs / "root/made/notes-link")
        assert notes.st_ino == link.st_ino and notes.st_nlink == 2
        assert (rootfs / "root" / "made" / "deeper").is_dir()
        assert os.stat(rootfs / "bin" / "busybox").st_mode & 0o777 == 0o700
        assert (rootfs / "bin" / "busybox").read_bytes() == busybox
        assert not os.path.lexists(rootfs / "sbin") and (rootfs / "sbin-moved").is_dir()
        assert sorted(os.listdir(rootfs / "usr" / "bin")) == usr_bin[1:]
        assert os.readlink(rootfs / "root" / "motd-link") == "/etc/motd"

        # Writable still, and what it writes now is kept by the next remount too.
        (rootfs / "root" / "after").write_text("written after the restart\n")
        os.rename(rootfs / "sbin-moved", rootfs / "sbin")
        kill_mount_process(rootfs)
        report = json.loads(lazyfs("recover", "--keep", "rw").stdout)
        assert report["remounted"] == ["rw"]
        assert (rootfs / "root" / "after").read_text() == "written after the restart\n"
        assert (rootfs / "sbin").is_dir() and not os.path.lexists(rootfs / "sbin-moved")
        assert (rootfs / "etc" / "motd").read_text() == "changed by the container\n"
    finally:
        lazyfs("recover")
    assert mounts_under(lazyfs.work_dir) == []


def test_a_writable_fuse_rootfs_whose_upper_is_damaged_is_reported_broken(
    lazyfs: Lazyfs,
) -> None:
    out = json.loads(lazyfs("provision", "rw", "busybox", "--backend", "fuse", "--writable").stdout)
    rootfs = Path(out["rootfs"])
    upper = rootfs.parent.parent / "scratch" / rootfs.name / "upper"
    try:
        (rootfs / "root" / "made").mkdir()
        kill_mount_process(rootfs)
        os.setxattr(upper / "root" / "made", "trusted.overlay.redirect", b"/../../etc")
        result = lazyfs("recover", "--keep", "rw", check=False)
        assert result.returncode == 1
        report = json.loads(result.stdout)
        assert report["kept"] == [] and report["remounted"] == []
        why = report["broken"]["rw"]
        assert f"upper directory {upper}: root/made has a bad redirect" in why
        assert result.stderr == f"lazyfs: container rw is broken: {why}\n"
    finally:
        lazyfs("recover")
    assert mounts_under(lazyfs.work_dir) == []
