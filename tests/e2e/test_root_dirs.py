"""As root, a work dir, store or cache dir another user could change is refused.

lazyfs trusts what is below its root directories by path: a blob named by
its digest is not hashed again. A user who could rename an entry on the way
to one (a directory of theirs in ``/tmp``, as Mesos' ``/tmp/mesos/store``
would be) could point it at a directory of root's, which lazyfs closed to
``0700`` and filled, or swap it for one holding blobs of their own making
once it was checked.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import REPO, Lazyfs, one_line_error

pytestmark = pytest.mark.integration

NOBODY = 65534


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A directory anyone may write, sticky, as ``/tmp``."""
    public = tmp_path / "public"
    public.mkdir()
    os.chmod(public, 0o1777)
    return public


def victim(tmp_path: Path) -> Path:
    """A directory of root's, 0755, that lazyfs must not touch."""
    path = tmp_path / "victim"
    path.mkdir()
    os.chmod(path, 0o755)
    return path


def test_a_store_through_another_users_directory_is_refused(
    lazyfs: Lazyfs, tmp_path: Path, shared: Path
) -> None:
    target = victim(tmp_path)
    theirs = shared / "mesos"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    (theirs / "store").symlink_to(target)
    os.lchown(theirs / "store", NOBODY, NOBODY)

    result = lazyfs("images", "--docker_store_dir", str(theirs / "store"), check=False)
    assert result.returncode == 1
    line = one_line_error(result)
    assert line.startswith(f"lazyfs: --docker_store_dir {theirs / 'store'}: ")
    assert "another user could change what it names" in line
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    assert list(target.iterdir()) == []


def test_another_users_link_in_a_sticky_directory_is_refused(
    lazyfs: Lazyfs, tmp_path: Path, shared: Path
) -> None:
    # A link of theirs to a directory of root's: the directory passes as root's own.
    target = victim(tmp_path)
    (shared / "work").symlink_to(target)
    os.lchown(shared / "work", NOBODY, NOBODY)
    work = Lazyfs(shared / "work", lazyfs.image_dir)
    result = work("images", check=False)
    assert result.returncode == 1
    assert "--work_dir" in one_line_error(result)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    assert list(target.iterdir()) == []


def test_a_work_dir_to_be_made_in_a_sticky_directory_is_made_at_once(
    lazyfs: Lazyfs, shared: Path
) -> None:
    work = Lazyfs(shared / "work" / "lazyfs", lazyfs.image_dir)
    assert work("images").stdout.splitlines()[0].split()[0] == "REFERENCE"
    made = os.lstat(shared / "work")
    assert (made.st_uid, stat.S_ISDIR(made.st_mode)) == (0, True)
    assert stat.S_IMODE(made.st_mode) == 0o700


def test_roots_of_roots_own_are_used_links_and_all(lazyfs: Lazyfs, tmp_path: Path) -> None:
    # A guard: a link root made, in directories only root can change, is followed.
    real = tmp_path / "real-store"
    real.mkdir()
    (tmp_path / "store-link").symlink_to(real)
    lazyfs("pull", "busybox", "--docker_store_dir", str(tmp_path / "store-link"))
    assert (real / "blobs").is_dir()


def test_a_work_dir_to_be_made_where_a_group_may_write_is_refused_unmade(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    group = tmp_path / "group-writable"
    group.mkdir()
    os.chmod(group, 0o775)  # not sticky: the group may rename what root makes there
    work = Lazyfs(group / "work", lazyfs.image_dir)
    line = one_line_error(work("images", check=False))
    assert f"would be made in {group}, a directory others may write" in line
    assert list(group.iterdir()) == []


def test_a_work_dir_to_be_made_in_another_users_directory_is_refused_unmade(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)  # 0755: writable by them alone, who may rename in it
    work = Lazyfs(theirs / "work", lazyfs.image_dir)
    line = one_line_error(work("images", check=False))
    assert f"would be made in {theirs}, a directory of uid {NOBODY}" in line
    assert list(theirs.iterdir()) == []


def test_a_work_dir_others_may_write_is_refused_as_it_is(lazyfs: Lazyfs, shared: Path) -> None:
    # Root's own, but a user put a runc state directory in it first: runc would run the
    # hooks of the state they write there, as root.
    planted = shared / "runc"
    planted.mkdir()
    os.chown(planted, NOBODY, NOBODY)
    for argv in (["images"], ["provision", "c1", "busybox", "--backend", "copy"]):
        result = Lazyfs(shared, lazyfs.image_dir)(*argv, check=False)
        line = one_line_error(result)
        assert line.startswith(f"lazyfs: --work_dir {shared}: is a directory others may write")
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777  # not closed over what is in it
    assert sorted(p.name for p in shared.iterdir()) == ["runc"]


def test_a_cache_dir_of_another_user_is_refused(lazyfs: Lazyfs, tmp_path: Path) -> None:
    theirs = tmp_path / "their-cache"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    result = lazyfs("cache", "--cache_dir", str(theirs), check=False)
    assert f"--cache_dir {theirs}: is a directory of uid {NOBODY}" in one_line_error(result)


def test_a_runc_state_directory_of_another_user_is_refused(lazyfs: Lazyfs) -> None:
    # Made before the work dir was closed (or by hand): runc would run its states' hooks.
    (lazyfs.work_dir / "runc").mkdir(parents=True)
    os.chown(lazyfs.work_dir / "runc", NOBODY, NOBODY)
    result = lazyfs("run", "--backend", "copy", "busybox", "--", "true", check=False)
    assert f"{lazyfs.work_dir / 'runc'} is owned by uid {NOBODY}" in one_line_error(result)


def test_another_user_is_told_of_a_root_dir_it_cannot_use(lazyfs: Lazyfs) -> None:
    base = Path(tempfile.mkdtemp(prefix="lazyfs-roots-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        (base / "roots").mkdir(mode=0o700)  # root's, as /var/lib/lazyfs is
        for work, expected in [
            (base / "roots", "is a directory of uid 0"),
            (base / "new" / "work", f"would be made in {base}, where this user may not write"),
        ]:
            result = subprocess.run(
                [sys.executable, "-m", "lazyfs", "--work_dir", str(work), "pull", "busybox"],
                capture_output=True, text=True, timeout=60, cwd=REPO, user=NOBODY,
                group=NOBODY, extra_groups=[], stdin=subprocess.DEVNULL,
            )  # fmt: skip
            line = one_line_error(result)
            assert line.startswith(f"lazyfs: --work_dir {work}: {expected}"), line
            assert line.endswith("use a directory of your own (--work_dir)")
    finally:
        shutil.rmtree(base)


def test_destroy_and_recover_do_not_ask_runc_of_a_state_of_another_user(lazyfs: Lazyfs) -> None:
    lazyfs("provision", "c1", "busybox", "--backend", "copy")
    state = lazyfs.work_dir / "runc" / "c1"
    state.mkdir(parents=True, mode=0o700)
    (state / "state.json").write_text("{}")  # runc delete would run the hooks it names
    os.chown(state, NOBODY, NOBODY)
    for argv in (["destroy", "c1"], ["recover"]):
        result = lazyfs(*argv, check=False)
        assert result.returncode == 1
        assert f"runc's state {state} is not this user's alone" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    shutil.rmtree(state)
    lazyfs("destroy", "c1")
