"""Applying tar layers to a directory: union rules, links, attributes, blobs.

Layers are built in memory with tarfile (``tests.support.tar_members``).
Tests that need root (owners, device nodes, security.* xattrs) skip without
it.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from backends.apply import LayerFile, apply_layers
from providers.digest import digest_bytes
from providers.errors import BadImage, UnsafeLayer
from tests.support.tar_members import (
    ROOT_ONLY,
    Member,
    apply_all,
    dir_,
    hard,
    layer,
    reg,
    sym,
    tar_info,
    tree,
    xattrs,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


# --- union rules ----------------------------------------------------------


def test_whiteout_hides_a_file(root: Path) -> None:
    apply_all(root, layer(reg("a/b", b"1"), reg("a/c", b"2")), layer(reg("a/.wh.b")))
    assert tree(root) == {"a": "dir", "a/c": "file:2"}


def test_whiteout_hides_a_directory_and_its_contents(root: Path) -> None:
    apply_all(root, layer(reg("d/x/y", b"1"), reg("e")), layer(reg(".wh.d")))
    assert tree(root) == {"e": "file:"}


def test_whiteout_of_something_absent_is_harmless(root: Path) -> None:
    apply_all(root, layer(reg("a")), layer(reg(".wh.zz"), reg("no/such/.wh.dir")))
    assert tree(root) == {"a": "file:"}


def test_whiteout_spares_entries_of_its_own_layer(root: Path) -> None:
    apply_all(root, layer(reg("a", b"old")), layer(reg("a", b"new"), reg(".wh.a")))
    assert tree(root) == {"a": "file:new"}


def test_whiteout_after_its_layer_rewrote_the_directory(root: Path) -> None:
    apply_all(
        root,
        layer(reg("d/old", b"1"), reg("d/sub/x", b"2")),
        layer(dir_("d"), reg("d/new", b"3"), reg("d/sub/y", b"4"), reg(".wh.d")),
    )
    assert tree(root) == {"d": "dir", "d/new": "file:3", "d/sub": "dir", "d/sub/y": "file:4"}


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory_in_a_middle_layer(root: Path, marker_first: bool) -> None:
    lower = layer(reg("d/old", b"1"), reg("d/sub/deep", b"2"), reg("d/keep/lower", b"3"))
    siblings = [dir_("d"), reg("d/new", b"4"), dir_("d/keep"), reg("d/keep/mine", b"5")]
    marker = reg("d/.wh..wh..opq")
    middle = layer(*([marker, *siblings] if marker_first else [*siblings, marker]))
    upper = layer(reg("d/top", b"6"))
    apply_all(root, lower, middle, upper)
    assert tree(root) == {
        "d": "dir",
        "d/keep": "dir",
        "d/keep/mine": "file:5",
        "d/new": "file:4",
        "d/top": "file:6",
    }


def test_opaque_root(root: Path) -> None:
    apply_all(root, layer(reg("a"), reg("b/c")), layer(reg("d"), reg(".wh..wh..opq")))
    assert tree(root) == {"d": "file:"}


def test_whiteout_through_a_symlinked_parent(root: Path) -> None:
    apply_all(root, layer(reg("usr/lib/x", b"1"), sym("lib", "usr/lib")), layer(reg("lib/.wh.x")))
    assert tree(root) == {"lib": "link:usr/lib", "usr": "dir", "usr/lib": "dir"}


def test_aufs_metadata_is_ignored(root: Path) -> None:
    apply_all(root, layer(dir_(".wh..wh.plnk"), reg(".wh..wh.plnk/1.2"), reg("a/.wh..wh.aufs")))
    assert tree(root) == {}


def test_directory_over_directory_keeps_contents_and_takes_attributes(root: Path) -> None:
    apply_all(
        root,
        layer(dir_("d", mode=0o700, mtime=100, pax_headers=xattrs(user_a=b"1")), reg("d/f")),
        layer(dir_("d", mode=0o751, mtime=200, pax_headers=xattrs(user_b=b"2"))),
    )
    assert tree(root) == {"d": "dir", "d/f": "file:"}
    info = (root / "d").stat()
    assert stat.S_IMODE(info.st_mode) == 0o751
    assert info.st_mtime == 200
    assert os.listxattr(root / "d") == ["user.b"]


@pytest.mark.parametrize(
    ("lower", "upper", "expected"),
    [
        ([reg("x", b"f")], [dir_("x")], {"x": "dir"}),
        ([reg("x/a"), reg("x/b/c")], [reg("x", b"f")], {"x": "file:f"}),
        (
            [dir_("t"), reg("t/in"), sym("x", "t")],
            [dir_("x")],
            {"t": "dir", "t/in": "file:", "x": "dir"},
        ),
        ([reg("x/a")], [sym("x", "/t")], {"x": "link:/t"}),
        ([sym("x", "a")], [reg("x", b"f")], {"x": "file:f"}),
        ([reg("x", b"f")], [sym("x", "y")], {"x": "link:y"}),
        ([reg("x", b"old")], [reg("x", b"new")], {"x": "file:new"}),
    ],
    ids=[
        "dir-over-file",
        "file-over-dir",
        "dir-over-symlink",
        "symlink-over-dir",
        "file-over-symlink",
        "symlink-over-file",
        "file-over-file",
    ],
)
def test_everything_but_dir_over_dir_replaces(
    root: Path, lower: list[Member], upper: list[Member], expected: dict[str, str]
) -> None:
    apply_all(root, layer(*lower), layer(*upper))
    assert tree(root) == expected


def test_usrmerge_parents_are_followed_inside_the_rootfs(root: Path) -> None:
    apply_all(
        root,
        layer(dir_("usr/lib"), sym("lib", "usr/lib"), sym("lib64", "/usr/lib")),
        layer(reg("lib/a.so", b"a"), reg("lib64/b.so", b"b"), reg("lib/new/c.so", b"c")),
    )
    assert tree(root) == {
        "lib": "link:usr/lib",
        "lib64": "link:/usr/lib",
        "usr": "dir",
        "usr/lib": "dir",
        "usr/lib/a.so": "file:a",
        "usr/lib/b.so": "file:b",
        "usr/lib/new": "dir",
        "usr/lib/new/c.so": "file:c",
    }


def test_directory_replaces_a_symlink_the_layer_already_wrote_through(root: Path) -> None:
    apply_all(root, layer(dir_("t"), sym("a", "t"), reg("a/x", b"1"), dir_("a"), reg("a/y", b"2")))
    assert tree(root) == {"a": "dir", "a/y": "file:2", "t": "dir", "t/x": "file:1"}


def test_missing_parents_are_made(root: Path) -> None:
    apply_all(root, layer(reg("a/b/c", b"x")))
    assert stat.S_IMODE((root / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "a/b").stat().st_mode) == 0o755


# --- links ----------------------------------------------------------------


def test_hardlinks_share_an_inode(root: Path) -> None:
    apply_all(
        root,
        layer(reg("bin/busybox", b"bb", mode=0o755)),
        layer(hard("bin/sh", "bin/busybox"), hard("./bin/ls", "./bin/busybox")),
    )
    busybox = (root / "bin/busybox").stat()
    assert busybox.st_nlink == 3
    assert (root / "bin/sh").stat().st_ino == busybox.st_ino
    assert (root / "bin/ls").read_bytes() == b"bb"


def test_hardlink_to_a_symlink_links_the_symlink(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    apply_all(root, layer(sym("s", "../secret"), hard("h", "s")))
    assert os.readlink(root / "h") == "../secret"
    assert (root / "h").lstat().st_ino == (root / "s").lstat().st_ino
    assert (tmp_path / "secret").stat().st_nlink == 1


def test_hardlink_replacing_a_file_keeps_the_lower_inode_apart(root: Path) -> None:
    apply_all(root, layer(reg("a", b"a"), reg("b", b"b")), layer(hard("b", "a")))
    assert (root / "b").read_bytes() == b"a"
    assert (root / "a").stat().st_nlink == 2


@pytest.mark.parametrize(
    "members",
    [
        [hard("h", "missing")],
        [dir_("d"), hard("h", "d")],
        [reg("f"), reg("f/x")],
    ],
    ids=["hardlink-to-nothing", "hardlink-to-dir", "parent-is-a-file"],
)
def test_nonsense_is_a_bad_image(root: Path, members: list[Member]) -> None:
    with pytest.raises(BadImage) as caught:
        apply_all(root, layer(*members))
    assert not isinstance(caught.value, UnsafeLayer)
    assert "layer0" in str(caught.value)


def test_symlinks_are_created_as_they_are(root: Path) -> None:
    apply_all(root, layer(sym("abs", "/etc/passwd"), sym("up", "../../x"), sym("dangling", "no")))
    assert tree(root) == {"abs": "link:/etc/passwd", "dangling": "link:no", "up": "link:../../x"}


# --- attributes -----------------------------------------------------------


def test_modes_keep_setuid_setgid_and_sticky(root: Path) -> None:
    apply_all(
        root,
        layer(
            reg("su", mode=0o4755, uid=1000),
            reg("sg", mode=0o2711),
            dir_("tmp", mode=0o1777),
            reg("private", mode=0o600),
        ),
    )
    modes = {name: stat.S_IMODE((root / name).stat().st_mode) for name in tree(root)}
    assert modes == {"su": 0o4755, "sg": 0o2711, "tmp": 0o1777, "private": 0o600}


@ROOT_ONLY
def test_owners(root: Path) -> None:
    apply_all(
        root,
        layer(
            dir_("d", uid=10, gid=20),
            reg("d/f", uid=1000, gid=1001),
            sym("d/l", "f", uid=7, gid=8),
            reg("su", mode=0o4755, uid=1000, gid=1000),
        ),
    )
    owners = {
        name: ((root / name).lstat().st_uid, (root / name).lstat().st_gid) for name in tree(root)
    }
    assert owners == {"d": (10, 20), "d/f": (1000, 1001), "d/l": (7, 8), "su": (1000, 1000)}
    assert stat.S_IMODE((root / "su").stat().st_mode) == 0o4755


def test_mtimes_of_files_symlinks_and_directories(root: Path) -> None:
    apply_all(
        root,
        layer(
            dir_("d", mtime=1_000),
            dir_("d/e", mtime=2_000),
            reg("d/e/f", mtime=3_000),
            sym("d/l", "e", mtime=4_000),
            reg("g", mtime=1_500_000_000.25),
        ),
        # Adding a child in a later layer that does not list d changes d, as with tar.
        layer(reg("d/e/f2", mtime=5_000), dir_("d/e", mtime=6_000)),
    )
    assert (root / "d").stat().st_mtime == 1_000
    assert (root / "d/e").stat().st_mtime == 6_000
    assert (root / "d/e/f").stat().st_mtime == 3_000
    assert (root / "d/l").lstat().st_mtime == 4_000
    assert (root / "g").stat().st_mtime_ns == 1_500_000_000_250_000_000


def test_root_entry_sets_the_root_attributes(root: Path) -> None:
    apply_all(
        root, layer(dir_("./", mode=0o750, mtime=42, pax_headers=xattrs(user_r=b"1")), reg("a"))
    )
    info = root.stat()
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert info.st_mtime == 42
    assert os.getxattr(root, "user.r") == b"1"


def test_root_entry_must_be_a_directory(root: Path) -> None:
    with pytest.raises(BadImage):
        apply_all(root, layer(reg("./")))


def test_user_xattrs(root: Path) -> None:
    apply_all(
        root, layer(reg("f", pax_headers=xattrs(user_mime=b"text/plain", user_bin=b"\xff\x00")))
    )
    assert os.getxattr(root / "f", "user.mime") == b"text/plain"
    assert os.getxattr(root / "f", "user.bin") == b"\xff\x00"


@ROOT_ONLY
def test_file_capabilities_survive_chown(root: Path) -> None:
    # vfs_cap_data revision 2: cap_net_bind_service (bit 10), effective.
    capability = bytes.fromhex("0100000200040000000000000000000000000000")
    apply_all(
        root,
        layer(
            reg(
                "ping",
                b"elf",
                mode=0o755,
                uid=0,
                pax_headers=xattrs(security_capability=capability),
            )
        ),
    )
    assert os.getxattr(root / "ping", "security.capability") == capability


@ROOT_ONLY
def test_device_nodes_and_fifos(root: Path) -> None:
    null = tar_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666, uid=0)
    loop = tar_info("dev/loop0", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660, gid=6)
    fifo = tar_info("run/fifo", tarfile.FIFOTYPE, mode=0o620)
    apply_all(root, layer((null, b""), (loop, b""), (fifo, b"")))
    info = (root / "dev/null").lstat()
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(info.st_mode) == 0o666
    info = (root / "dev/loop0").lstat()
    assert stat.S_ISBLK(info.st_mode) and info.st_rdev == os.makedev(7, 0) and info.st_gid == 6
    info = (root / "run/fifo").lstat()
    assert stat.S_ISFIFO(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o620


def test_unprivileged_skips_devices_and_owners(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    null = tar_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
    fifo = tar_info("fifo", tarfile.FIFOTYPE, uid=55)
    apply_all(root, layer((null, b""), hard("dev/null2", "dev/null"), (fifo, b"")))
    assert tree(root) == {"dev": "dir", "fifo": "prw-r--r--"}
    assert (root / "fifo").lstat().st_uid == os.getuid()  # not 55: ownership skipped
    assert "skipped 1 device nodes" in caplog.text


# --- whole blobs ----------------------------------------------------------


@pytest.mark.parametrize("compress", [gzip.compress, zstandard.ZstdCompressor().compress, bytes])
def test_apply_layers_reads_compressed_blobs(root: Path, tmp_path: Path, compress: object) -> None:
    blobs = [layer(reg("a", b"1"), reg("b", b"2")), layer(reg(".wh.a"), reg("c", b"3"))]
    files = []
    for index, blob in enumerate(blobs):
        data = compress(blob.getvalue())  # type: ignore[operator]
        path = tmp_path / f"blob{index}"
        path.write_bytes(data)
        files.append(LayerFile(digest_bytes(data), path))
    apply_layers(root, files)
    assert tree(root) == {"b": "file:2", "c": "file:3"}


def test_a_directory_without_a_header_keeps_its_lower_mtime(root: Path) -> None:
    # As umoci does: a later layer that adds to or removes from a directory
    # without a header for it leaves the directory's time as the lower layer set it.
    apply_all(
        root,
        layer(dir_("d", mtime=1_000), reg("d/gone"), dir_("e", mtime=2_000)),
        layer(reg("d/new"), reg("d/.wh.gone"), reg("e/deeper/file")),
    )
    assert sorted(os.listdir(root / "d")) == ["new"]
    assert os.stat(root / "d").st_mtime == 1_000
    assert os.stat(root / "e").st_mtime == 2_000
