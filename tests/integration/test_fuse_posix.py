"""POSIX cases of the writable mount where it used to part from kernel overlayfs.

pjdfstest cannot be built here, so each case it found is a test of its own:
long names and paths, link's ctime, link and rename without copying data,
renamed lower directories, and nodes let go of once the kernel forgets them.
Where the case is about matching overlayfs, the same calls run on a kernel
overlayfs mount of the same layers (``CowMounts.overlay``) and must answer
alike.  Every test runs on both FUSE paths (``fuse_path``).
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lazyfs.fs.upper import METACOPY_XATTR, REDIRECT_XATTR, exchange_paths
from tests.support.cow_mounts import CowMounts
from tests.support.images import Entry
from tests.support.tree import is_whiteout

pytestmark = pytest.mark.integration

LAYER = [
    Entry("d", "dir"),
    Entry("d/a", data=b"a"),
    Entry("d/sub", "dir"),
    Entry("d/sub/b", data=b"b"),
    Entry("f", data=b"f"),
]
BIG = os.urandom(1 << 16) * 64  # 4 MiB
PATH_MAX = 4096
SMALL_BLOCKS = 64  # 32 KiB: room for xattrs, nowhere near BIG's 8192 blocks


@pytest.fixture
def mounts(tmp_path: Path, fuse_path: str) -> Iterator[CowMounts]:
    made = CowMounts(tmp_path)
    try:
        yield made
    finally:
        made.close()


def answer(call: Callable[[], object]) -> int:
    """The errno ``call`` fails with, 0 if it works."""
    try:
        call()
    except OSError as error:
        return error.errno or -1
    return 0


def long_name_answers(root: Path) -> dict[str, int]:
    """What each call answers for a name one byte past NAME_MAX in ``root``."""
    long = root / ("n" * 256)
    return {
        "stat": answer(lambda: os.stat(long)),
        "unlink": answer(lambda: os.unlink(long)),
        "rmdir": answer(lambda: os.rmdir(long)),
        "create": answer(lambda: os.close(os.open(long, os.O_CREAT | os.O_WRONLY, 0o644))),
        "mkdir": answer(lambda: os.mkdir(long)),
        "mknod": answer(lambda: os.mknod(long)),
        "symlink": answer(lambda: os.symlink("f", long)),
        "link": answer(lambda: os.link(root / "f", long)),
        "rename to": answer(lambda: os.rename(root / "f", long)),
        "rename from": answer(lambda: os.rename(long, root / "x")),
        "lower dir": answer(lambda: os.stat(root / "d" / ("n" * 256))),
    }


def test_a_name_past_name_max_is_enametoolong_as_on_overlayfs(mounts: CowMounts) -> None:
    m = mounts.mount([LAYER])
    seen = long_name_answers(m.root)
    assert seen == long_name_answers(mounts.overlay(m.layers))
    assert set(seen.values()) == {errno.ENAMETOOLONG}


def deep_chain(root_fd: int, length: int) -> tuple[str, str]:
    """Directories below ``root_fd`` so that ``chain/name`` is ``length`` bytes: (chain, name)."""
    parts = []
    for _ in range(-(-(length - 255) // 200)):  # leaves 56 to 255 bytes for the name
        parts.append("d" * 199)
        os.mkdir("/".join(parts), dir_fd=root_fd)
    return "/".join(parts), "f" * (length - 200 * len(parts))


def at_path_max(root: Path) -> list[object]:
    """Create, stat, rename and unlink a file at a path of PATH_MAX - 1 bytes inside ``root``.

    The paths are relative to an fd of ``root``, so its own path counts for nothing.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        chain, name = deep_chain(root_fd, PATH_MAX - 1)
        path = f"{chain}/{name}"
        renamed = f"{chain}/{'g' * len(name)}"
        assert len(path) == len(renamed) == PATH_MAX - 1
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=root_fd)
        os.write(fd, b"deep")
        os.close(fd)
        found = os.stat(path, dir_fd=root_fd)
        os.rename(path, renamed, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        os.mkdir(f"{chain}/x", dir_fd=root_fd)
        os.rename(
            f"{chain}/x", f"{chain}/{'y' * len(name)}", src_dir_fd=root_fd, dst_dir_fd=root_fd
        )
        os.chmod(renamed, 0o640, dir_fd=root_fd)
        os.utime(renamed, ns=(1, 2), dir_fd=root_fd)
        renamed_fd = os.open(renamed, os.O_RDONLY, dir_fd=root_fd)
        data = os.read(renamed_fd, 10)
        os.close(renamed_fd)
        after = os.stat(renamed, dir_fd=root_fd)
        os.unlink(renamed, dir_fd=root_fd)
        gone = answer(lambda: os.stat(renamed, dir_fd=root_fd))
        return [found.st_size, data, after.st_mode & 0o777, after.st_mtime_ns, gone]
    finally:
        os.close(root_fd)


def test_paths_of_path_max_minus_one_bytes_work_as_on_overlayfs(mounts: CowMounts) -> None:
    m = mounts.mount([LAYER])
    seen = at_path_max(m.root)
    assert seen == at_path_max(mounts.overlay(m.layers))
    assert seen == [4, b"deep", 0o640, 2, errno.ENOENT]


@pytest.mark.parametrize("which", ["lower", "upper"])
def test_link_changes_the_files_ctime(mounts: CowMounts, which: str) -> None:
    m = mounts.mount([LAYER])
    if which == "upper":
        (m.root / "f").write_bytes(b"mine")
    before = os.stat(m.root / "f").st_ctime_ns
    os.link(m.root / "f", m.root / "d" / "again")
    assert os.stat(m.root / "f").st_ctime_ns > before
    assert os.stat(m.root / "d" / "again").st_ctime_ns == os.stat(m.root / "f").st_ctime_ns


def test_link_and_rename_of_a_large_lower_file_copy_no_data(mounts: CowMounts) -> None:
    m = mounts.mount([[*LAYER, Entry("big", data=BIG)]])
    os.rename(m.root / "big", m.root / "d" / "moved")
    os.link(m.root / "d" / "moved", m.root / "d" / "sub" / "linked")
    os.rename(m.root / "d" / "sub" / "linked", m.root / "linked")
    for name in ("d/moved", "linked"):
        on_disk = os.stat(m.upper / name)
        assert on_disk.st_blocks < SMALL_BLOCKS and on_disk.st_size == len(BIG)
        assert os.getxattr(m.upper / name, METACOPY_XATTR) == b""
        assert os.getxattr(m.upper / name, REDIRECT_XATTR) == b"/big"
        assert (m.root / name).read_bytes() == BIG
    assert is_whiteout(m.upper / "big") and not (m.root / "big").exists()
    assert os.stat(m.root / "linked").st_nlink == 2
    mounts.unmount(m)
    # Kernel overlayfs finds the bytes through the redirects too.
    kernel = mounts.overlay(m.layers, m.upper)
    assert (kernel / "d" / "moved").read_bytes() == (kernel / "linked").read_bytes() == BIG
    assert not (kernel / "big").exists()
    # The first write copies the bytes up, at every name.
    m = mounts.mount([[*LAYER, Entry("big", data=BIG)]])
    os.link(m.root / "big", m.root / "d" / "linked")
    with (m.root / "d" / "linked").open("r+b") as file:
        file.write(b"HEAD")
    for name in ("big", "d/linked"):
        assert (m.root / name).read_bytes() == (m.upper / name).read_bytes() == b"HEAD" + BIG[4:]
        assert REDIRECT_XATTR not in os.listxattr(m.upper / name)
    assert os.stat(m.upper / "big").st_ino == os.stat(m.upper / "d" / "linked").st_ino


def overlay_tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``, with the bytes of regular files."""
    found: dict[str, bytes | None] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top, name)
            found[str(path.relative_to(root))] = path.read_bytes() if path.is_file() else None
    return found


def test_a_lower_directory_renames_through_a_redirect(mounts: CowMounts) -> None:
    m = mounts.mount([LAYER, [Entry("d/top", data=b"top")]])
    os.rename(m.root / "d", m.root / "e")
    assert sorted(os.listdir(m.root / "e")) == ["a", "sub", "top"]
    assert (m.root / "e" / "sub" / "b").read_bytes() == b"b"
    assert not (m.root / "d").exists() and is_whiteout(m.upper / "d")
    assert os.getxattr(m.upper / "e", REDIRECT_XATTR) == b"/d"
    # Its lower children are its own under the new name: removed, replaced, moved.
    (m.root / "e" / "a").unlink()
    assert is_whiteout(m.upper / "e" / "a")
    (m.root / "e" / "a").write_bytes(b"new a")
    os.mkdir(m.root / "x")
    os.rename(m.root / "e" / "sub", m.root / "x" / "sub2")
    assert os.getxattr(m.upper / "x" / "sub2", REDIRECT_XATTR) == b"/d/sub"
    assert (m.root / "x" / "sub2" / "b").read_bytes() == b"b"
    seen = overlay_tree(m.root)
    # And back again.
    os.rename(m.root / "e", m.root / "d")
    assert sorted(os.listdir(m.root / "d")) == ["a", "top"]
    assert not (m.root / "e").exists() and not os.path.lexists(m.upper / "e")
    os.rename(m.root / "d", m.root / "e")
    assert overlay_tree(m.root) == seen
    mounts.unmount(m)
    assert overlay_tree(mounts.overlay(m.layers, m.upper)) == seen


def test_a_lower_directory_replaces_an_empty_one_and_exchanges(mounts: CowMounts) -> None:
    m = mounts.mount([[*LAYER, Entry("empty", "dir")]])
    os.rename(m.root / "d", m.root / "empty")
    assert sorted(os.listdir(m.root / "empty")) == ["a", "sub"]
    os.rename(m.root / "empty" / "sub", m.root / "f2")
    os.rename(m.root / "f2", m.root / "empty" / "sub")
    exchange_paths(m.root / "empty" / "sub", m.root / "f")  # a lower directory and file
    assert (m.root / "f" / "b").read_bytes() == b"b"
    assert (m.root / "empty" / "sub").read_bytes() == b"f"
    seen = overlay_tree(m.root)
    mounts.unmount(m)
    assert overlay_tree(mounts.overlay(m.layers, m.upper)) == seen


HELD = re.compile(rb"\[(\d+) nodes held\]")


def nodes_held(log: Path, root: Path) -> int:
    """How many nodes the mount at ``root`` holds, from its ``--debug`` log.

    statfs is never cached, so it reaches the mount, which logs its count.
    """
    os.statvfs(root)
    return int(HELD.findall(log.read_bytes())[-1])


def test_nodes_of_deleted_files_are_let_go_of(mounts: CowMounts) -> None:
    m = mounts.mount([LAYER], debug=True)
    (m.root / "many").mkdir()
    start = nodes_held(mounts.log, m.root)
    for i in range(20_000):
        path = m.root / "many" / f"file{i}"
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        os.unlink(path)
    # The kernel forgets an unlinked inode as the unlink returns and sends forgets
    # ahead of other requests, but a batch of them may still be on its way, or served
    # beside the statfs that counts: asked until every one is let go of (each ask a
    # request through the mount). Nodes kept would be 20,000, and never let go of.
    stuck = time.monotonic() + 60  # a bound on a hang, not a timing
    while (held := nodes_held(mounts.log, m.root)) > start:
        assert time.monotonic() < stuck, f"{held - start} nodes of deleted files held"
