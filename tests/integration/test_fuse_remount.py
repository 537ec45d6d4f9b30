"""A writable mount started over the upper a mount left shows what that mount showed.

Changes of every kind the upper format has (whiteouts, opaque directories,
metacopies with and without redirects, renamed lower directories, hardlinks
in upper and in the lower layers, data copies) are made through a real
mount; a second mount over the same upper must show the same tree, and the
same as kernel overlayfs over those layers and that upper.  Every mount is
taken down by the ``mounts`` fixture whatever the test did; every test runs
on both FUSE paths.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from lazyfs.fs.upper import OPAQUE_XATTR, REDIRECT_XATTR, exchange_paths
from providers.errors import BackendError
from tests.support.cow_mounts import CowMounts
from tests.support.images import Entry, whiteout
from tests.support.tree import Node, diff_trees, is_whiteout, tree_digest

pytestmark = pytest.mark.integration

BIG = b"0123456789abcdef" * (1 << 16)  # 1 MiB

LAYERS = [
    [
        Entry("etc", "dir", mode=0o755),
        Entry("etc/a", data=b"a", xattrs={"user.tag": b"lower"}),
        Entry("etc/h", "hardlink", target="etc/a"),
        Entry("etc/gone", data=b"gone"),
        Entry("big", data=BIG, mode=0o644),
        Entry("linked", data=b"linked bytes"),
        Entry("d", "dir"),
        Entry("d/old", data=b"old"),
        Entry("ren", "dir", mode=0o750),
        Entry("ren/x", data=b"x"),
        Entry("ren/keep", data=b"keep"),
        Entry("ren/sub", "dir"),
        Entry("ren/sub/y", data=b"y"),
        Entry("m", "dir"),
        Entry("m/f", data=b"metacopy moved"),
        Entry("s", "symlink", target="d"),
        Entry("lh", data=b"lower hardlink"),
        Entry("lh2", "hardlink", target="lh"),
        Entry("untouched", "dir"),
        Entry("untouched/file", data=b"u"),
    ],
    [whiteout("etc/gone2"), Entry("etc/b", data=b"b")],
]


@pytest.fixture
def mounts(tmp_path: Path, fuse_path: str) -> Iterator[CowMounts]:
    """Writable mounts (and kernel overlayfs ones), all taken down afterwards."""
    made = CowMounts(tmp_path)
    try:
        yield made
    finally:
        made.close()


def change_everything(root: Path) -> None:
    """Changes of every kind the upper records, through the mount at ``root``."""
    (root / "etc" / "gone").unlink()  # a whiteout
    os.chmod(root / "big", 0o600)  # a metacopy
    os.chown(root / "etc" / "a", 3, 4)  # a metacopy at two names (a lower hardlink)
    os.setxattr(root / "etc" / "a", "user.more", b"upper")
    (root / "etc" / "b").write_bytes(b"B")  # data copied up
    os.link(root / "etc" / "b", root / "etc" / "b2")  # a hardlink in upper
    os.link(root / "linked", root / "linked2")  # a metacopy with a redirect, two names
    (root / "d" / "old").unlink()
    (root / "d").rmdir()
    (root / "d").mkdir()  # opaque
    (root / "d" / "n").write_bytes(b"n")
    (root / "s").unlink()
    (root / "s").mkdir(mode=0o700)  # opaque, over a lower symlink
    os.rename(root / "ren", root / "ren2")  # a lower directory, through a redirect
    (root / "ren2" / "x").unlink()  # a whiteout in a redirected directory
    (root / "ren2" / "new").write_bytes(b"new")
    os.rename(root / "ren2" / "sub", root / "sub2")  # a redirect inside a redirected one
    os.rename(root / "m" / "f", root / "mf")  # a metacopy moved: redirect /m/f
    (root / "lh2").unlink()  # a lower hardlink loses a name
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.symlink("/nowhere/outside", root / "dangling")
    os.symlink("../../../../etc", root / "etc" / "escape")
    deep = root / "new"
    for _ in range(40):
        deep = deep / "level"
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"bottom")
    os.setxattr(root / "m", "user.dir", b"on a copied-up directory")
    os.utime(root / "linked", ns=(1_000_000_000, 2_000_000_000))
    exchange_paths(root / "etc" / "b2", root / "d" / "n")


def without_mtimes(tree: Mapping[str, Node]) -> dict[str, Node]:
    return {path: node._replace(mtime_ns=None) for path, node in tree.items()}


def file_links(root: Path) -> dict[str, int]:
    """st_nlink of every non-directory under ``root`` (tree_digest leaves it out)."""
    found = {}
    for top, _, names in os.walk(root):
        for name in names:
            path = Path(top, name)
            found[str(path.relative_to(root))] = os.lstat(path).st_nlink
    return found


def same(a: Mapping[str, Node], b: Mapping[str, Node]) -> None:
    differences = diff_trees(a, b)
    assert not differences, "\n".join(differences)


def test_a_remount_shows_every_change_and_kernel_overlayfs_agrees(mounts: CowMounts) -> None:
    first = mounts.mount(LAYERS)
    change_everything(first.root)
    before, links = tree_digest(first.root), file_links(first.root)
    assert links["etc/a"] == links["etc/h"] == 2 and links["lh"] == 1
    mounts.unmount(first)
    assert is_whiteout(first.upper / "ren") and is_whiteout(first.upper / "etc" / "gone")
    assert os.getxattr(first.upper / "ren2", REDIRECT_XATTR) == b"/ren"
    assert os.getxattr(first.upper / "d", OPAQUE_XATTR) == b"y"

    second = mounts.mount_again(first)
    after = tree_digest(second.root)
    # Times the first mount kept in memory only come back as the upper has them.
    same(without_mtimes(before), without_mtimes(after))
    assert file_links(second.root) == links
    assert after["linked"].mtime_ns == before["linked"].mtime_ns == 2_000_000_000
    assert after["lh"].mtime_ns == before["lh"].mtime_ns
    hard = os.stat(second.root / "etc" / "a")
    assert os.stat(second.root / "etc" / "h").st_ino == hard.st_ino
    assert os.stat(second.root / "linked2").st_ino == os.stat(second.root / "linked").st_ino
    assert (second.root / "mf").read_bytes() == b"metacopy moved"
    assert os.readlink(second.root / "etc" / "escape") == "../../../../etc"
    mounts.unmount(second)

    kernel = mounts.overlay(first.layers, first.upper)
    same(after, tree_digest(kernel))


def test_a_remounted_view_keeps_working_and_its_upper_stays_valid(mounts: CowMounts) -> None:
    first = mounts.mount(LAYERS)
    change_everything(first.root)
    mounts.unmount(first)
    second = mounts.mount_again(first)
    root = second.root
    # The loaded state takes every kind of change again.
    with (root / "etc" / "h").open("ab") as h:
        h.write(b" more")  # a loaded metacopy of two names gets its data
    assert (root / "etc" / "a").read_bytes() == b"a more"
    with (root / "linked2").open("ab") as linked:
        linked.write(b"!")  # a loaded metacopy with a redirect
    assert (root / "linked").read_bytes() == b"linked bytes!"
    os.rename(root / "ren2" / "keep", root / "kept")  # out of a redirected directory
    os.rename(root / "sub2", root / "ren2" / "sub")  # back in
    assert (root / "ren2" / "sub" / "y").read_bytes() == b"y"
    (root / "etc" / "gone").write_bytes(b"again")  # over a loaded whiteout
    os.rename(root / "untouched", root / "touched")  # a lower directory not loaded
    (root / "touched" / "file").unlink()
    os.chmod(root / "big", 0o640)
    assert (root / "big").read_bytes() == BIG
    os.unlink(root / "etc" / "b")
    os.rmdir(root / "s")
    (root / "ren2" / "more").mkdir()
    seen = tree_digest(root)
    mounts.unmount(second)

    third = mounts.mount_again(first)
    again = tree_digest(third.root)
    same(without_mtimes(seen), without_mtimes(again))
    mounts.unmount(third)
    same(again, tree_digest(mounts.overlay(first.layers, first.upper)))


def test_a_remount_of_an_untouched_mount_keeps_the_root_as_changed(mounts: CowMounts) -> None:
    first = mounts.mount([[Entry("f", data=b"f")]])
    os.chmod(first.root, 0o711)
    os.chown(first.root, 7, 8)
    mounts.unmount(first)
    assert os.listdir(first.upper) == []
    second = mounts.mount_again(first)
    found = os.stat(second.root)
    assert (stat.S_IMODE(found.st_mode), found.st_uid, found.st_gid) == (0o711, 7, 8)
    assert (second.root / "f").read_bytes() == b"f"


def test_a_damaged_upper_is_refused_in_one_line(mounts: CowMounts) -> None:
    first = mounts.mount([[Entry("d", "dir"), Entry("d/f", data=b"f")]])
    (first.root / "e").mkdir()
    mounts.unmount(first)
    os.setxattr(first.upper / "e", REDIRECT_XATTR, b"/d/../..")
    with pytest.raises(BackendError) as refused:
        mounts.mount_again(first)
    message = str(refused.value)
    assert f"upper directory {first.upper}: e has a bad redirect" in message
    assert "\n" not in message and "Traceback" not in message


def test_an_upper_kernel_overlayfs_wrote_loads_as_the_kernel_showed_it(
    mounts: CowMounts,
) -> None:
    first = mounts.mount(LAYERS)  # for its layers, upper and work: nothing is written
    mounts.unmount(first)
    kernel = mounts.overlay(first.layers, first.upper)
    (kernel / "etc" / "gone").unlink()
    os.chmod(kernel / "big", 0o600)
    (kernel / "etc" / "b").write_bytes(b"kernel")
    os.link(kernel / "etc" / "b", kernel / "b-link")
    os.rename(kernel / "ren", kernel / "ren2")  # the kernel's redirect is relative here
    os.rename(kernel / "ren2" / "sub", kernel / "etc" / "sub")  # and absolute here
    (kernel / "ren2" / "x").unlink()
    os.rename(kernel / "m" / "f", kernel / "mf")
    (kernel / "d" / "old").unlink()
    (kernel / "d").rmdir()
    (kernel / "d").mkdir()
    (kernel / "d" / "n").write_bytes(b"n")
    os.mkfifo(kernel / "fifo")
    os.symlink("ren2", kernel / "to-ren2")
    shown = tree_digest(kernel)
    subprocess.run(["umount", kernel], check=True)
    again = mounts.mount_again(first)
    same(shown, tree_digest(again.root))
    (again.root / "ren2" / "more").write_bytes(b"more")  # and it goes on from there
    assert sorted(os.listdir(again.root / "ren2")) == ["keep", "more"]
