"""As root, ``lazyfs mount`` mounts only on a path no other user can change.

Between the mount point's check and the mount process's ``mount(2)`` the
image is fetched and indexed, for seconds; a user who may rename an entry on
the path swaps the checked directory for a symlink meanwhile, and root's
mount lands where it points. Each case here builds such a path, with a
directory or a symlink of user 65534 on it, and checks that it is refused
(``others_can_move``), and that paths only root can change are not.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.provision.devmount import check_mountpoint
from providers import mount_path
from providers.errors import UsageError
from providers.mount_path import others_can_move
from tests.support.fuse_mounts import debug_mounted
from tests.support.images import Entry

NOBODY = 65534


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the paths are root's and user 65534's")
    # pytest's tmp_path is root's, under a root-owned 0700 directory.
    yield tmp_path


def _dir(path: Path, mode: int, uid: int = 0) -> Path:
    path.mkdir()
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def test_a_path_of_roots_alone_is_fine(base: Path) -> None:
    point = _dir(_dir(base / "a", 0o755) / "look", 0o755)
    assert others_can_move(str(point)) is None
    assert check_mountpoint(point, suid=False, dev=False) == point


def test_a_directory_of_another_user_on_the_path_is_refused(base: Path) -> None:
    # /home/bob/look: bob may rename look, or anything below his directory.
    point = _dir(_dir(base / "bob", 0o755, NOBODY) / "look", 0o755)
    assert others_can_move(str(point)) == f"{point} is in a directory of uid {NOBODY}"
    with pytest.raises(UsageError, match="no other user can move the mount point"):
        check_mountpoint(point, suid=False, dev=False)


def test_the_mount_point_of_another_user_in_a_sticky_directory_is_refused(base: Path) -> None:
    sticky = _dir(base / "tmp", 0o1777)
    theirs = _dir(sticky / "theirs", 0o755, NOBODY)
    ours = _dir(sticky / "ours", 0o755)
    assert others_can_move(str(theirs)) == (
        f"{theirs} is owned by uid {NOBODY}, in a directory others may write"
    )
    assert others_can_move(str(ours)) is None


def test_a_directory_others_may_write_is_refused(base: Path) -> None:
    shared = _dir(base / "shared", 0o777)
    point = _dir(shared / "look", 0o755)
    assert others_can_move(str(point)) == f"{point} is in a directory others may write"
    group = _dir(base / "group", 0o775)
    assert others_can_move(str(_dir(group / "look", 0o755))) is not None


def test_symlinks_on_the_path_are_followed_and_checked(base: Path) -> None:
    real = _dir(_dir(base / "real", 0o755) / "look", 0o755)
    (base / "link").symlink_to("real")  # root's, in root's directory: fine
    assert others_can_move(str(base / "link" / "look")) is None
    # A symlink to a directory of another user's: refused where it leads.
    bobs = _dir(base / "bob", 0o755, NOBODY)
    _dir(bobs / "look", 0o755)
    (base / "to-bob").symlink_to(bobs)
    assert others_can_move(str(base / "to-bob" / "look")) == (
        f"{bobs / 'look'} is in a directory of uid {NOBODY}"
    )
    # A symlink another user placed in a sticky directory, to root's own directory.
    sticky = _dir(base / "tmp", 0o1777)
    (sticky / "planted").symlink_to(real)
    os.lchown(sticky / "planted", NOBODY, NOBODY)
    assert others_can_move(str(sticky / "planted")) == (
        f"{sticky / 'planted'} is owned by uid {NOBODY}, in a directory others may write"
    )


def test_a_symlink_loop_cannot_be_checked(base: Path) -> None:
    (base / "loop").symlink_to("loop")
    with pytest.raises(OSError, match="symlinks"):
        others_can_move(str(base / "loop"))


def test_lazyfs_mount_refuses_such_a_path_in_one_line_and_starts_nothing(base: Path) -> None:
    point = _dir(_dir(base / "bob", 0o755, NOBODY) / "look", 0o755)
    work = base / "work"
    done = subprocess.run(
        # A directory as the registry: were the mount not refused, nothing would leave here.
        [sys.executable, "-P", "-m", "lazyfs", "--work_dir", str(work), "--docker_registry",
         str(base / "images"), "mount", "busybox", str(point)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"lazyfs: refusing mount point {point}: {point} is in a directory of uid {NOBODY}"
        " (as root, lazyfs mounts only where no other user can move the mount point)"
    ]
    assert not work.exists()  # no store, no daemon: refused before anything started


def test_a_path_through_a_fuse_filesystem_is_refused(base: Path) -> None:
    # A user's FUSE server, mounted allow_other, says uid 0 and 0755 of whatever it
    # serves, and answers mount(2)'s lookup of the last step with any symlink it likes.
    with debug_mounted(base, [Entry("look", "dir", mode=0o755)], writable=False) as mounted:
        assert others_can_move(str(mounted / "look")) == (
            f"{mounted} is on a fuse filesystem, whose owners and links prove nothing"
        )


def test_a_path_through_proc_is_refused(base: Path) -> None:
    # /proc/PID/cwd leads where the process is, not where its link's text says.
    assert others_can_move("/proc/self/cwd") == (
        "/proc is on a proc filesystem, whose owners and links prove nothing"
    )


def test_a_private_group_a_directory_service_does_not_list_is_asked_for_by_gid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # sssd does not enumerate by default: getgrall lists none of its groups, getgrgid finds it.
    alice = pwd.struct_passwd(("alice", "x", 5000, 5000, "", "/home/alice", "/bin/sh"))
    group = grp.struct_group(("alice", "x", 5000, []))
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: alice)
    monkeypatch.setattr(pwd, "getpwall", lambda: [alice])
    monkeypatch.setattr(grp, "getgrall", lambda: [])
    monkeypatch.setattr(grp, "getgrgid", lambda gid: group)
    mount_path.private_group.cache_clear()
    try:
        assert mount_path.private_group(5000, 5000)
    finally:
        mount_path.private_group.cache_clear()
