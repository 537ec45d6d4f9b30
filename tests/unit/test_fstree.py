"""remove_tree: any depth, no link followed, no mount crossed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.mounts import mount, unmount
from providers.fstree import remove_tree


def make_deep(top: Path, depth: int, name: str = "d") -> None:
    """``depth`` nested directories under ``top``, a file at every tenth, made fd-relative."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            os.mkdir(name, dir_fd=fd)
            if level % 10 == 0:
                os.close(os.open(f"f{level}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def test_a_tree_deeper_than_the_recursion_limit_and_path_max_goes(tmp_path: Path) -> None:
    depth = sys.getrecursionlimit() + 1000
    top = tmp_path / "top"
    make_deep(top, depth, name="n" * 10)  # 11 bytes a level: far past PATH_MAX
    remove_tree(top)
    assert list(tmp_path.iterdir()) == []


def test_wide_directories_and_every_kind_of_entry_go(tmp_path: Path) -> None:
    top = tmp_path / "top"
    for i in range(50):
        (top / f"a{i}" / "b").mkdir(parents=True)
        (top / f"a{i}" / "b" / "file").write_text("x")
    os.mkfifo(top / "fifo")
    os.symlink("a0", top / "link")
    os.chmod(top / "a1", 0)  # root still empties it, as rm -rf does
    remove_tree(top)
    assert not top.exists()


def test_symlinks_are_removed_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    os.symlink(outside, top / "sub" / "escape")
    os.symlink(outside, tmp_path / "toplink")
    remove_tree(top)
    remove_tree(tmp_path / "toplink")
    assert not top.exists() and not (tmp_path / "toplink").exists()
    assert (outside / "keep").read_text() == "precious"


def test_a_missing_path_or_a_plain_file_is_fine(tmp_path: Path) -> None:
    remove_tree(tmp_path / "nothing")
    remove_tree(tmp_path / "no" / "parent")
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert list(tmp_path.iterdir()) == []


def test_a_mount_inside_is_refused_and_its_content_kept(tmp_path: Path) -> None:
    top = tmp_path / "top"
    inner = top / "a" / "mnt"
    inner.mkdir(parents=True)
    mount("tmpfs", inner, "tmpfs", 0, "size=1m")
    try:
        (inner / "shared").write_text("not ours to delete")
        with pytest.raises(OSError) as caught:
            remove_tree(top)
        assert caught.value.errno == errno.EXDEV
        assert (inner / "shared").read_text() == "not ours to delete"
    finally:
        unmount(inner)
    remove_tree(top)
    assert not top.exists()


def test_an_error_deep_inside_names_where_and_the_rest_stays(tmp_path: Path) -> None:
    top = tmp_path / "top"
    make_deep(top, 20)
    stuck = top / "/".join(["d"] * 15) / "stuck"
    stuck.write_text("x")
    subprocess.run(["chattr", "+i", stuck], check=True)
    try:
        with pytest.raises(OSError) as caught:
            remove_tree(top)
        assert caught.value.errno == errno.EPERM
        assert caught.value.filename == f"{top}/d/d/d/...10 more.../d/d/stuck"
        assert stuck.exists()
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)
    remove_tree(top)
    assert not top.exists()


NOBODY = 65534


def as_nobody(action: Callable[[], None]) -> None:
    """Run ``action`` in a child of this process with uid and gid 65534; fail if it raises."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the action failed as nobody (see stderr)"


def test_not_as_root_directories_of_ours_we_may_not_change_or_list_go() -> None:
    # A copy rootfs made by a user keeps the image's modes: 0555 /usr/bin, a 0000
    # directory. Unlinking needs write and search on the directory: destroy failed
    # with EACCES and left half a rootfs. pytest's own temporary directories are 0700
    # root's, out of nobody's reach: this one is in /tmp.
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        top = Path(scratch) / "rootfs"
        (top / "usr" / "bin").mkdir(parents=True)
        (top / "usr" / "bin" / "sh").write_text("x")
        (top / "closed" / "inner").mkdir(parents=True)
        (top / "closed" / "inner" / "f").write_text("y")
        (top / "closed" / "link").symlink_to("/etc")
        for made in (Path(scratch), top, *top.rglob("*")):
            os.chown(made, NOBODY, NOBODY, follow_symlinks=False)
        for path, mode in (
            ("usr/bin", 0o555),
            ("usr", 0o555),
            ("closed/inner", 0),
            ("closed", 0o500),
        ):
            (top / path).chmod(mode)
        as_nobody(lambda: remove_tree(top))
        assert not top.exists()
        assert os.stat("/etc").st_mode & 0o7777 == 0o755
