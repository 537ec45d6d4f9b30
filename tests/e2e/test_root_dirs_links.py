"""Run by a user, lazyfs never follows a third user's path into a directory of the user's own.

lazyfs closes its root directories to ``0700`` and fills them. Run by alice
(user 65534 here), a root directory named through a symlink of mallory's
(user 65533), or through a directory mallory may change, could lead into
alice's ``public_html``: lazyfs would close it and fill it, as alice may.
So such a path is refused in one line naming the flag, and the victim
keeps its mode and contents; paths only alice and root can change work.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import REPO, one_line_error

pytestmark = pytest.mark.integration

ALICE = 65534
MALLORY = 65533
FLAGS = ("work_dir", "docker_store_dir", "appc_store_dir", "cache_dir")


@dataclass
class World:
    """A 0755 directory every user can reach: alice's home, her ``public_html``, images."""

    base: Path

    @property
    def home(self) -> Path:
        return self.base / "home" / "alice"

    @property
    def victim(self) -> Path:
        return self.home / "public_html"

    def make(self, path: Path, mode: int, uid: int = 0) -> Path:
        path.mkdir()
        os.chown(path, uid, uid)
        os.chmod(path, mode)
        return path

    def link(self, path: Path, target: Path, uid: int) -> Path:
        path.symlink_to(target)
        os.lchown(path, uid, uid)
        return path

    def as_alice(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``lazyfs`` run by alice, on the images here."""
        return subprocess.run(
            [sys.executable, "-m", "lazyfs", "--docker_registry", str(self.base / "images"),
             *argv],
            capture_output=True, text=True, timeout=120, cwd=REPO, user=ALICE, group=ALICE,
            extra_groups=[], stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(self.home)},
        )  # fmt: skip

    def assert_victim_untouched(self) -> None:
        found = os.stat(self.victim)
        held = sorted(p.name for p in self.victim.iterdir())
        assert (found.st_uid, oct(stat.S_IMODE(found.st_mode)), held) == (
            ALICE, "0o755", ["index.html"]
        )  # fmt: skip


@pytest.fixture
def world(image_dir: Path) -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="lazyfs-links-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)  # pytest's own directories are root's 0700: alice could not pass
        here = World(base)
        here.make(base / "images", 0o755)
        shutil.copy(image_dir / "busybox:latest.tar", base / "images")
        here.make(base / "home", 0o755)
        here.make(here.home, 0o755, ALICE)
        here.make(here.victim, 0o755, ALICE)
        (here.victim / "index.html").write_text("alice's page\n")
        os.chown(here.victim / "index.html", ALICE, ALICE)
        yield here
    finally:
        shutil.rmtree(base)


def _refused(world: World, flag: str, path: Path) -> str:
    """The one line alice gets for ``--FLAG PATH`` (any other root in her home)."""
    argv = [f"--{flag}", str(path)]
    if flag != "work_dir":
        argv += ["--work_dir", str(world.home / "work")]
    result = world.as_alice(*argv, "pull", "busybox")
    world.assert_victim_untouched()
    line = one_line_error(result)
    assert line.startswith(f"lazyfs: --{flag} {path}: "), line
    assert line.endswith(f"(--{flag})"), line
    return line


@pytest.mark.parametrize("flag", FLAGS)
def test_a_link_of_a_third_user_to_the_users_own_directory_is_refused(
    world: World, flag: str
) -> None:
    theirs = world.make(world.base / "mallory", 0o755, MALLORY)
    planted = world.link(theirs / "x", world.victim, MALLORY)
    line = _refused(world, flag, planted)
    assert f"{planted} is in a directory of uid {MALLORY}, so another user could" in line
    assert not (world.home / "work").exists()


def test_a_link_of_a_third_user_in_a_sticky_directory_is_refused(world: World) -> None:
    # What fs.protected_symlinks would stop, when it is on; lazyfs does not count on it.
    sticky = world.make(world.base / "tmp", 0o1777)
    planted = world.link(sticky / "work", world.victim, MALLORY)
    line = _refused(world, "work_dir", planted)
    assert f"{planted} is owned by uid {MALLORY}, in a directory others may write" in line


def test_a_link_of_a_third_user_in_the_users_own_directory_is_refused(world: World) -> None:
    # Made while they could write there (or chowned to them): theirs to choose, not followed.
    planted = world.link(world.home / "work", world.victim, MALLORY)
    line = _refused(world, "work_dir", planted)
    assert f"{planted} is a symlink of uid {MALLORY}" in line


def test_the_users_own_link_through_a_third_users_directory_is_refused(world: World) -> None:
    # alice's link is fine; where it leads, mallory may swap x at will.
    theirs = world.make(world.base / "mallory", 0o755, MALLORY)
    world.link(theirs / "x", world.victim, MALLORY)
    own = world.link(world.home / "work", theirs / "x", ALICE)
    line = _refused(world, "work_dir", own)
    assert f"{theirs / 'x'} is in a directory of uid {MALLORY}" in line


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_the_users_directory_in_one_others_or_a_group_may_write_is_refused(
    world: World, mode: int
) -> None:
    # Not sticky: anyone who may write it may rename alice's directory and put a link there.
    shared = world.make(world.base / "shared", mode)
    own = world.make(shared / "work", 0o700, ALICE)
    line = _refused(world, "docker_store_dir", own)
    assert f"{own} is in a directory others may write" in line
    assert list(own.iterdir()) == []


def test_the_users_own_root_others_may_write_is_refused_as_it_is(world: World) -> None:
    # What mallory put there before lazyfs would close it would be trusted as lazyfs' own.
    work = world.make(world.home / "work", 0o777, ALICE)
    world.make(work / "runc", 0o755, MALLORY)
    result = world.as_alice("--work_dir", str(work), "pull", "busybox")
    line = one_line_error(result)
    assert line.startswith(f"lazyfs: --work_dir {work}: is a directory others may write"), line
    assert oct(stat.S_IMODE(os.stat(work).st_mode)) == "0o777"  # not closed over what it holds
    assert sorted(p.name for p in work.iterdir()) == ["runc"]


@pytest.mark.parametrize("owner", [0, MALLORY])
def test_a_root_to_be_made_where_a_third_user_could_make_it_first_is_refused_unmade(
    world: World, owner: int
) -> None:
    # The default store under a new work dir: mallory, able to write there, could make the
    # work dir first, as a link to public_html, before lazyfs made it.
    shared = world.make(world.base / "shared", 0o777, owner)
    line = _refused(world, "work_dir", shared / "work")
    if owner == 0:
        assert f"would be made in {shared}, a directory others may write" in line
    else:
        assert f"would be made in {shared}, a directory of uid {MALLORY}" in line
    assert list(shared.iterdir()) == []


def test_the_users_own_paths_are_used_links_and_all(world: World) -> None:
    # Guards: alice's own directory, reached through a link of root's and one of her own.
    world.link(world.base / "homes", world.base / "home", 0)
    world.make(world.home / "lazyfs", 0o755, ALICE)
    world.link(world.home / "lazy", Path("lazyfs"), ALICE)
    work = world.base / "homes" / "alice" / "lazy" / "work"
    world.as_alice("--work_dir", str(work), "pull", "busybox").check_returncode()
    made = os.stat(world.home / "lazyfs" / "work")
    assert (made.st_uid, stat.S_IMODE(made.st_mode)) == (ALICE, 0o700)
    assert (world.home / "lazyfs" / "work" / "store" / "docker" / "blobs").is_dir()
    world.assert_victim_untouched()


def test_a_root_to_be_made_in_a_sticky_directory_is_made_at_once_and_used(world: World) -> None:
    sticky = world.make(world.base / "tmp", 0o1777)
    work = sticky / "alice-work"
    listed = world.as_alice("--work_dir", str(work / "lazyfs"), "images")
    assert listed.returncode == 0, listed.stderr
    made = os.lstat(work)
    assert (made.st_uid, stat.S_ISDIR(made.st_mode), stat.S_IMODE(made.st_mode)) == (
        ALICE, True, 0o700
    )  # fmt: skip
    world.as_alice("--work_dir", str(work / "lazyfs"), "pull", "busybox").check_returncode()
    assert (work / "lazyfs" / "store" / "docker" / "blobs").is_dir()


def _with_accounts(world: World, alice_group_members: str, more_groups: str = "") -> list[str]:
    """A command prefix that runs what follows as alice, in a mount namespace whose account
    databases hold root and alice, alice's group 65534 listing ``alice_group_members``, and
    the lines ``more_groups``."""
    accounts = world.base / "accounts"
    accounts.mkdir()
    (accounts / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        f"alice:x:{ALICE}:{ALICE}:alice:{world.home}:/bin/sh\n"
        f"mallory:x:{MALLORY}:{MALLORY}:mallory:/:/bin/sh\n"
    )
    (accounts / "group").write_text(
        f"root:x:0:\nalice:x:{ALICE}:{alice_group_members}\nmallory:x:{MALLORY}:\n{more_groups}"
    )
    binds = " && ".join(
        f"mount --bind {accounts / name} /etc/{name}" for name in ("passwd", "group")
    )
    inner = f'{binds} && exec setpriv --reuid {ALICE} --regid {ALICE} --clear-groups "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner, "sh"]


def _pull_in_group_writable_home(
    world: World, members: str, more_groups: str = ""
) -> subprocess.CompletedProcess[str]:
    os.chmod(world.home, 0o775)  # made with Debian's umask 002 for users
    work = world.make(world.home / "work", 0o775, ALICE)
    return subprocess.run(
        [*_with_accounts(world, members, more_groups), sys.executable, "-m", "lazyfs",
         "--docker_registry", str(world.base / "images"), "--work_dir", str(work), "pull",
         "busybox"],
        capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(world.home)},
    )  # fmt: skip


def test_directories_writable_by_the_users_own_private_group_are_the_users(
    world: World,
) -> None:
    result = _pull_in_group_writable_home(world, "")
    assert result.returncode == 0, result.stderr
    assert (world.home / "work" / "store").is_dir()
    assert stat.S_IMODE(os.stat(world.home / "work").st_mode) == 0o700  # closed as ever


@pytest.mark.parametrize(
    ("members", "more_groups"),
    [("alice,mallory", ""), ("", f"staff:x:{ALICE}:mallory\n")],
    ids=["a member", "a second entry of its gid"],
)
def test_a_group_with_another_member_is_not_the_users_alone(
    world: World, members: str, more_groups: str
) -> None:
    result = _pull_in_group_writable_home(world, members, more_groups)
    line = one_line_error(result)
    assert f"{world.home / 'work'} is in a directory others may write" in line, line
    assert not (world.home / "work" / "store").exists()
