"""Copy-on-write on real FUSE mounts: the cases fuse-overlayfs tests for, and the upper they leave.

Each test mounts through the ``cow`` fixture, which builds the test's layers,
mounts them writable with an upper directory of their own, and unmounts and
checks that the mount process is gone whatever the test did.  Every test runs
on both FUSE paths (``fuse_path``: no-open and open), with the mount
process exec'd and forked by the mount server (``mount_start``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pytest

from backends.base import scratch_dir
from backends.fuse import FuseBackend
from lazyfs.fs import mount as lazy_mount
from lazyfs.fs.upper import METACOPY_XATTR, OPAQUE_XATTR, exchange_paths
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from tests.support import fuse_paths
from tests.support.blob_sources import store_files
from tests.support.cow_mounts import Cow, CowMounts
from tests.support.fuse_mounts import need_fuse, requests, walk_and_read
from tests.support.images import Entry, opaque, whiteout, write_layer
from tests.support.kept_trees import drop_kept_trees
from tests.support.tree import is_whiteout

pytestmark = pytest.mark.integration

BIG = b"0123456789abcdef" * (1 << 16)  # 1 MiB


class Mount(Protocol):
    def __call__(self, layers: Sequence[Sequence[Entry]], *, debug: bool = False) -> Cow: ...


@pytest.fixture
def cow(mounts: CowMounts) -> Mount:
    """Mounts layers writable, each mount with fresh upper and work."""
    return mounts.mount


def test_a_whiteout_in_a_middle_layer_hides_a_deeper_directory(cow: Mount) -> None:
    m = cow(
        [
            [Entry("a", "dir"), Entry("a/b", "dir"), Entry("a/b/f", data=b"f")],
            [whiteout("a/b")],
            [Entry("a/c", data=b"c")],
        ]
    )
    assert os.listdir(m.root / "a") == ["c"]
    (m.root / "a" / "b").mkdir()
    assert os.listdir(m.root / "a" / "b") == []
    # The middle layer's whiteout already hides the deeper a/b from overlayfs too.
    assert OPAQUE_XATTR not in os.listxattr(m.upper / "a" / "b")


def test_an_opaque_directory_in_a_lower_layer(cow: Mount) -> None:
    m = cow(
        [
            [Entry("o", "dir"), Entry("o/old", data=b"old")],
            [opaque("o"), Entry("o/new", data=b"new")],
        ]
    )
    assert os.listdir(m.root / "o") == ["new"]
    (m.root / "o" / "more").write_bytes(b"more")
    assert sorted(os.listdir(m.root / "o")) == ["more", "new"]
    (m.root / "o" / "new").unlink()
    assert os.listdir(m.root / "o") == ["more"]
    assert is_whiteout(m.upper / "o" / "new")


def test_a_root_whiteout_does_not_hide_a_nested_name(cow: Mount) -> None:
    m = cow([[Entry("x", data=b"x"), Entry("a", "dir"), Entry("a/x", data=b"ax")], [whiteout("x")]])
    assert os.listdir(m.root) == ["a"]
    assert (m.root / "a" / "x").read_bytes() == b"ax"
    (m.root / "a" / "x").unlink()
    assert is_whiteout(m.upper / "a" / "x")
    assert not os.path.lexists(m.upper / "x")


def test_re_creating_a_deleted_file(cow: Mount) -> None:
    m = cow([[Entry("etc", "dir"), Entry("etc/f", data=b"lower", mode=0o600)]])
    (m.root / "etc" / "f").unlink()
    assert not (m.root / "etc" / "f").exists()
    (m.root / "etc" / "f").write_bytes(b"upper")
    assert (m.root / "etc" / "f").read_bytes() == b"upper"
    assert os.stat(m.root / "etc" / "f").st_mode & 0o777 == 0o644
    assert (m.upper / "etc" / "f").read_bytes() == b"upper"


def test_a_directory_created_over_a_lower_symlink(cow: Mount) -> None:
    m = cow([[Entry("d", "dir"), Entry("d/in", data=b"in"), Entry("s", "symlink", target="d")]])
    assert (m.root / "s" / "in").read_bytes() == b"in"
    (m.root / "s").unlink()
    (m.root / "s").mkdir()
    (m.root / "s" / "mine").write_bytes(b"mine")
    assert os.listdir(m.root / "s") == ["mine"]
    assert not (m.root / "s").is_symlink() and os.listdir(m.root / "d") == ["in"]
    assert os.getxattr(m.upper / "s", OPAQUE_XATTR) == b"y"


def test_reading_files_removed_while_open(cow: Mount) -> None:
    m = cow([[Entry("lower", data=BIG)]])
    (m.root / "upper").write_bytes(b"upper bytes")
    with (m.root / "lower").open("rb") as lower, (m.root / "upper").open("rb") as upper:
        (m.root / "lower").unlink()
        (m.root / "upper").unlink()
        assert lower.read() == BIG
        assert upper.read() == b"upper bytes"
    assert os.listdir(m.root) == []


def test_a_reader_opened_before_a_copy_up_sees_the_new_bytes(cow: Mount) -> None:
    m = cow([[Entry("big", data=BIG)]])
    with (m.root / "big").open("rb", buffering=0) as reader:
        assert reader.read(4) == BIG[:4]
        with (m.root / "big").open("r+b") as writer:
            writer.seek(len(BIG) - 4)
            writer.write(b"TAIL")
        (m.root / "big").unlink()
        reader.seek(len(BIG) - 8)
        assert reader.read() == BIG[-8:-4] + b"TAIL"
    assert is_whiteout(m.upper / "big")


def test_o_trunc_empties_a_lower_file_and_readers_see_it(cow: Mount) -> None:
    m = cow([[Entry("big", data=BIG)]])
    with (m.root / "big").open("rb", buffering=0) as reader:
        assert reader.read(4) == BIG[:4]
        (m.root / "big").write_bytes(b"short")  # open(O_WRONLY | O_TRUNC)
        assert reader.read() == b"t"  # what is left of the new bytes after the 4 read
    assert (m.root / "big").read_bytes() == (m.upper / "big").read_bytes() == b"short"
    assert os.stat(m.root / "big").st_size == 5


def test_writes_and_truncates_through_an_fd_of_an_unlinked_lower_file(cow: Mount) -> None:
    m = cow([[Entry("big", data=BIG)]])
    fd = os.open(m.root / "big", os.O_RDWR)
    try:
        os.unlink(m.root / "big")
        assert os.pwrite(fd, b"NEW", 0) == 3
        os.ftruncate(fd, 10)
        assert os.pread(fd, 20, 0) == b"NEW" + BIG[3:10]
        assert os.fstat(fd).st_size == 10
    finally:
        os.close(fd)
    assert os.listdir(m.root) == [] and is_whiteout(m.upper / "big")


def test_hardlink_counts_after_link_and_after_copy_up(cow: Mount) -> None:
    m = cow([[Entry("f", data=b"data"), Entry("h", "hardlink", target="f")]])
    assert os.stat(m.root / "f").st_nlink == 2
    os.link(m.root / "f", m.root / "g")
    assert [os.stat(m.root / n).st_nlink for n in "fgh"] == [3, 3, 3]
    with (m.root / "h").open("ab") as h:
        h.write(b" more")  # copies the data up
    assert [os.stat(m.root / n).st_nlink for n in "fgh"] == [3, 3, 3]
    assert (m.root / "f").read_bytes() == (m.root / "g").read_bytes() == b"data more"
    assert os.stat(m.upper / "f").st_nlink == 3
    (m.root / "g").unlink()
    assert os.stat(m.root / "f").st_nlink == 2


def test_untouched_lower_files_cost_no_open_once_warm(
    cow: Mount, fuse_path: str, tmp_path: Path
) -> None:
    layer = [Entry("etc", "dir"), Entry("etc/a", data=b"a" * 5000), Entry("big", data=BIG)]
    m = cow([layer], debug=True)
    (m.root / "mine").write_bytes(b"written")  # the mount has been written to, too
    walk_and_read(m.root)
    log = tmp_path / "mount.log"
    warm = len(log.read_bytes())
    dirs, files = walk_and_read(m.root)
    second = requests(log.read_bytes()[warm:])
    if fuse_path == fuse_paths.NO_OPEN:
        # Attributes of a writable mount expire (fuse_write.TIMEOUT): getattr may come.
        assert not second.keys() & {"open", "release", "opendir", "releasedir", "flush", "read"}
    else:  # release and releasedir are sent after close returns: not counted here
        assert (second["open"], second["opendir"]) == (files, dirs)


def test_st_ino_is_stable_across_remounts(cow: Mount, tmp_path: Path) -> None:
    layers = [[Entry("etc", "dir"), Entry("etc/a", data=b"a"), Entry("b", data=b"b")]]
    first = cow(layers)
    # Merged again, not loaded from the store: the numbering itself must be stable.
    drop_kept_trees(Store(tmp_path / "store").layers, [layer.digest for layer in first.layers])
    second = cow(layers)
    os.chmod(first.root / "etc" / "a", 0o600)
    (first.root / "b").write_bytes(b"changed")
    for name in ("etc", "etc/a", "b"):
        assert os.stat(first.root / name).st_ino == os.stat(second.root / name).st_ino


def test_chmod_of_a_large_lower_file_copies_no_data(cow: Mount) -> None:
    m = cow([[Entry("big", data=BIG, mode=0o644)]])
    os.chmod(m.root / "big", 0o600)
    os.chown(m.root / "big", 5, 6)
    copied = os.stat(m.upper / "big")
    assert copied.st_size == len(BIG) and copied.st_blocks == 0
    assert (copied.st_mode & 0o777, copied.st_uid, copied.st_gid) == (0o600, 5, 6)
    assert os.getxattr(m.upper / "big", METACOPY_XATTR) == b""
    assert (m.root / "big").read_bytes() == BIG


def test_renames_and_refusals(cow: Mount) -> None:
    m = cow([[Entry("d", "dir"), Entry("d/f", data=b"f"), Entry("g", data=b"g")]])
    os.rename(m.root / "d", m.root / "e")  # a lower directory: through a redirect
    os.rename(m.root / "e", m.root / "d")
    os.rename(m.root / "d" / "f", m.root / "f")
    assert (m.root / "f").read_bytes() == b"f" and is_whiteout(m.upper / "d" / "f")
    (m.root / "new").mkdir()
    (m.root / "new" / "x").write_bytes(b"x")
    os.rename(m.root / "new", m.root / "d" / "new")
    assert (m.root / "d" / "new" / "x").read_bytes() == b"x"
    with pytest.raises(OSError) as refused:
        os.rmdir(m.root / "d")
    assert refused.value.errno == errno.ENOTEMPTY
    os.truncate(m.root / "g", 0)
    assert (m.root / "g").read_bytes() == b""
    os.symlink("g", m.root / "s")
    assert os.readlink(m.root / "s") == "g"
    os.setxattr(m.root / "g", "user.k", b"v")
    assert os.getxattr(m.root / "g", "user.k") == b"v"
    os.removexattr(m.root / "g", "user.k")
    assert os.listxattr(m.root / "g") == []


def tree(root: Path) -> dict[str, tuple[int, int, int, int, bytes | None]]:
    """Every path under ``root``: mode, owner, links (files) and contents (regular files)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = os.lstat(path)
            regular = stat.S_ISREG(st.st_mode)
            found[str(path.relative_to(root))] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_nlink if regular else 0,
                path.read_bytes() if regular else None,
            )
    return found


def test_kernel_overlayfs_reads_the_upper_as_the_mount_showed_it(
    mounts: CowMounts, cow: Mount
) -> None:
    m = cow(
        [
            [
                *(Entry(n, "dir") for n in ("etc", "d")),
                *(Entry(f"etc/{n}", data=n.encode()) for n in ("a", "gone")),
                Entry("big", data=BIG),
                Entry("d/old", data=b"o"),
                Entry("s", "symlink", target="d"),
                Entry("etc/h", "hardlink", target="etc/a"),
            ],
            [Entry("etc/b", data=b"b")],
        ]
    )
    (m.root / "etc" / "gone").unlink()
    os.chmod(m.root / "big", 0o600)  # a metacopy
    os.chown(m.root / "etc" / "a", 3, 4)  # a metacopy at two names
    (m.root / "etc" / "b").write_bytes(b"B")
    (m.root / "d" / "old").unlink()
    (m.root / "d").rmdir()
    (m.root / "d").mkdir()  # opaque
    (m.root / "d" / "n").write_bytes(b"n")
    (m.root / "s").unlink()
    (m.root / "s").mkdir()
    os.link(m.root / "etc" / "b", m.root / "etc" / "b2")
    exchange_paths(m.root / "etc" / "a", m.root / "s")  # a file (two names) and a new dir
    assert (m.root / "s").read_bytes() == (m.root / "etc" / "h").read_bytes() == b"a"
    assert (m.root / "etc" / "a").is_dir()
    seen = tree(m.root)
    mounts.unmount(m)
    assert tree(mounts.overlay(m.layers, m.upper)) == seen


def test_the_backend_provisions_writable_and_destroy_removes_the_upper(
    tmp_path: Path, fuse_path: str
) -> None:
    need_fuse()
    blob = write_layer([Entry("etc", "dir"), Entry("etc/a", data=b"a")], tmp_path / "l.tar")
    store = Store(tmp_path / "store")
    layers = store_files(store, [blob])
    backend = FuseBackend(store.root)
    rootfs = tmp_path / "c" / "rootfses" / "r"
    rootfs.parent.mkdir(parents=True)
    try:
        info = backend.provision(layers, StoreBlobs(store), rootfs, writable=True)
        assert info.writable
        (rootfs / "etc" / "b").write_bytes(b"b")
        assert (scratch_dir(rootfs) / "upper" / "etc" / "b").read_bytes() == b"b"
    finally:
        backend.destroy(rootfs)
    assert not lazy_mount.is_mounted(rootfs)
    assert not os.path.lexists(rootfs) and not scratch_dir(rootfs).exists()
