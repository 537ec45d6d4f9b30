"""A container's /etc/passwd or /etc/group that runc's init would hang on is refused first.

runc opens both in the container (symlinks followed from its root) for every user, "0:0"
too, and reads them to the end before the command runs: a FIFO held ``lazyfs run`` for
ever, deaf to SIGTERM. ``runtime.bundle_config`` refuses such an image in one line
(``image_user.check_tables``); what runc would find nothing at, or a regular file, is fine.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from lazyfs.provision.image_user import check_tables
from lazyfs.provision.runtime import bundle_config, runc_mounts
from providers.errors import BadImage
from providers.manifest import RuntimeConfig

RUNC_OWN = [mount["destination"] for mount in runc_mounts()]


def fifo(path: Path) -> None:
    os.mkfifo(path)


def unix_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as made:
        made.bind(str(path))


def char_device(path: Path) -> None:
    # /dev/urandom's numbers: read line by line, it never ends. Needs root, as lazyfs run.
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 9))


def directory(path: Path) -> None:
    path.mkdir()


def link(target: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.symlink_to(target)

    return make


def regular(path: Path) -> None:
    path.write_text("root:x:0:0::/root:/bin/sh\n")


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    for name in ("etc", "usr/lib", "data", "proc", "dev"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "etc" / "group").write_text("root:x:0:\n")
    os.mkfifo(tmp_path / "data" / "fifo")
    (tmp_path / "usr" / "lib" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    return tmp_path


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (fifo, "the image's /etc/passwd is a FIFO: runc would wait on it for ever"),
        (unix_socket, "the image's /etc/passwd is a socket: "),
        (char_device, "the image's /etc/passwd is a character device: "),
        (directory, "the image's /etc/passwd is a directory: "),
        # A symlink is followed in the rootfs, as runc's open follows it in the container.
        (link("/data/fifo"), "the image's /etc/passwd leads to a FIFO: "),
        (link("../data/fifo"), "the image's /etc/passwd leads to a FIFO: "),
        (link("../../../../data/fifo"), "the image's /etc/passwd leads to a FIFO: "),
        (link("/usr/../data/./fifo"), "the image's /etc/passwd leads to a FIFO: "),
        (link("/"), "the image's /etc/passwd leads to a directory: "),
        # runc's own filesystems: a pty master from /dev/ptmx, its stdin at /proc/self/fd/0.
        (link("/dev/ptmx"), "the image's /etc/passwd leads into /dev, which runc mounts: "),
        (link("/proc/self/fd/0"), "the image's /etc/passwd leads into /proc, which runc "),
        # Only /dev/null itself is an empty table: not a neighbour, nor a path past it.
        (link("/dev/zero"), "the image's /etc/passwd leads into /dev, which runc mounts: "),
        (link("/dev/nullx"), "the image's /etc/passwd leads into /dev, which runc mounts: "),
        (link("/dev/null/.."), "the image's /etc/passwd leads into /dev, which runc mounts: "),
        (link("/dev"), "the image's /etc/passwd leads into /dev, which runc mounts: "),
    ],
)
def test_a_table_runc_would_hang_on_is_refused_in_one_line(
    rootfs: Path, make: Callable[[Path], None], said: str
) -> None:
    make(rootfs / "etc" / "passwd")
    with pytest.raises(BadImage) as refused:
        check_tables(rootfs, None, RUNC_OWN)
    assert str(refused.value).startswith(said) and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "make",
    [
        regular,
        link("/usr/lib/passwd"),
        link("../usr/lib/passwd"),
        link("hosts"),
        # runc's open finds nothing at these: no table, for runc too.
        link("/nowhere"),
        link("passwd"),  # a loop
        link("hosts/fifo"),  # a file before the end: ENOTDIR
        link("/etc/hosts/../../data/fifo"),
        # runc's /dev/null, an empty table: docker runs such images.
        link("/dev/null"),
        link("../dev/./null"),
    ],
)
def test_a_regular_file_or_nothing_is_fine(rootfs: Path, make: Callable[[Path], None]) -> None:
    make(rootfs / "etc" / "passwd")
    check_tables(rootfs, None, RUNC_OWN)


def test_no_etc_or_no_tables_is_fine(tmp_path: Path) -> None:
    check_tables(tmp_path, None, RUNC_OWN)
    (tmp_path / "etc").mkdir()
    check_tables(tmp_path, None, RUNC_OWN)


def test_the_group_table_is_checked_as_well(rootfs: Path) -> None:
    (rootfs / "etc" / "group").unlink()
    os.mkfifo(rootfs / "etc" / "group")
    with pytest.raises(BadImage, match=r"^the image's /etc/group is a FIFO: "):
        check_tables(rootfs, None, RUNC_OWN)


def test_an_etc_that_is_a_symlink_is_followed(rootfs: Path) -> None:
    (rootfs / "usr" / "etc").mkdir()
    os.mkfifo(rootfs / "usr" / "etc" / "passwd")
    (rootfs / "etc").rename(rootfs / "old-etc")
    (rootfs / "etc").symlink_to("usr/etc")
    with pytest.raises(BadImage, match=r"^the image's /etc/passwd leads to a FIFO: "):
        check_tables(rootfs, None, RUNC_OWN)
    # As ``lazyfs run`` gives it: the container's /etc found, symlinks resolved.
    with pytest.raises(BadImage, match=r"^the image's /etc/passwd is a FIFO: "):
        check_tables(rootfs, rootfs / "usr" / "etc", RUNC_OWN)


def test_a_volume_at_etc_is_where_the_tables_are(
    rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    volume = tmp_path_factory.mktemp("volume")
    os.mkfifo(volume / "passwd")
    check_tables(rootfs, None, RUNC_OWN)  # the rootfs' own /etc is fine, and hidden
    with pytest.raises(BadImage, match=r"^the image's /etc/passwd is a FIFO: "):
        check_tables(rootfs, volume, RUNC_OWN)
    # A symlink in it leads back out of it, from the container's root.
    (volume / "passwd").unlink()
    (volume / "passwd").symlink_to("../data/fifo")
    with pytest.raises(BadImage, match=r"^the image's /etc/passwd leads to a FIFO: "):
        check_tables(rootfs, volume, RUNC_OWN)
    (volume / "passwd").unlink()
    (volume / "passwd").symlink_to("/usr/lib/passwd")
    check_tables(rootfs, volume, RUNC_OWN)


@pytest.mark.parametrize("user", ["0:0", "", "1000"])
def test_the_bundle_is_refused_whoever_the_user_is(rootfs: Path, user: str) -> None:
    # lazyfs' own lookup never reads the FIFO; runc's init would block on it all the same.
    (rootfs / "etc" / "passwd").symlink_to("/data/fifo")
    config = RuntimeConfig(cmd=("/bin/true",), user=user)
    with pytest.raises(BadImage, match=r"^the image's /etc/passwd leads to a FIFO: "):
        bundle_config(rootfs, config, [], readonly=False, cgroups_path="lazyfs/test")
