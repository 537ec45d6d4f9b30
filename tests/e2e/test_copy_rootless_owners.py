"""A user other than root provisions a copy rootfs: the files are the user's, and the
image's owners are kept in ``user.rootlesscontainers`` xattrs, byte for byte as
``umoci unpack --rootless`` keeps them (before, they were lost without a record).

Both tests run the tools as user 65534 and so need root; without it, or without
umoci, they fail.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images
from tests.support.images import Entry
from tests.support.nobody import NOBODY, as_nobody

pytestmark = pytest.mark.integration

XATTR = "user.rootlesscontainers"

# Owners in every combination umoci tells apart: root, root's uid or gid only, the
# unpacking user's own ids (65534, which are not root in the container), large ids;
# symlinks and a fifo that cannot carry a user.* xattr; a file that keeps even its
# owner from writing; a hardlink; owners changed by a later layer, of a file (replaced)
# and of a directory (kept, with the new attributes).
LAYERS = [
    [
        Entry("etc", "dir", mode=0o755),
        Entry("etc/root", data=b"root\n"),
        Entry("etc/www", data=b"www\n", uid=33, gid=33),
        Entry("etc/uid-only", data=b"u\n", uid=33),
        Entry("etc/gid-only", data=b"g\n", gid=42),
        Entry("etc/nobody", data=b"n\n", uid=NOBODY, gid=NOBODY),
        Entry("etc/big", data=b"b\n", uid=100000, gid=200000),
        Entry("etc/read-only", data=b"r\n", mode=0o444, uid=1, gid=2),
        Entry("etc/link", "symlink", target="www", uid=33, gid=33),
        Entry("etc/root-link", "symlink", target="root"),
        Entry("etc/www-too", "hardlink", target="etc/www", uid=33, gid=33),
        Entry("etc/fifo", "fifo", mode=0o600, uid=5, gid=5),
        Entry("srv", "dir", mode=0o750, uid=33, gid=33),
        Entry("srv/site", "dir", mode=0o555, uid=33, gid=0),
        Entry("srv/site/index", data=b"hi\n", uid=33, gid=33),
        Entry("var", "dir", mode=0o755, uid=7, gid=7),
    ],
    [
        Entry("etc/root", data=b"now www's\n", uid=0, gid=33),
        Entry("var", "dir", mode=0o755),
        Entry("var/log", data=b"log\n", uid=0, gid=4),
        Entry("srv/site", "dir", mode=0o555, uid=8, gid=9),
        Entry("srv/site/more", data=b"more\n", mode=0o400, uid=8),
    ],
]

# What umoci 0.4.7 writes for these owners where it can (see UMOCI_LOSES), checked with
# ``umoci unpack --rootless``: the protobuf by hand, 0x08 uid, 0x10 gid, varints, uint32 -1
# for "root".
EXPECTED = {
    "etc/root": bytes.fromhex("08ffffffff0f1021"),
    "etc/www": bytes.fromhex("08211021"),
    "etc/www-too": bytes.fromhex("08211021"),
    "etc/uid-only": bytes.fromhex("082110ffffffff0f"),
    "etc/gid-only": bytes.fromhex("08ffffffff0f102a"),
    "etc/nobody": bytes.fromhex("08feff0310feff03"),
    "etc/big": bytes.fromhex("08a08d0610c09a0c"),
    "etc/read-only": bytes.fromhex("08011002"),
    "srv": bytes.fromhex("08211021"),
    "srv/site": bytes.fromhex("08081009"),
    "srv/site/more": bytes.fromhex("080810ffffffff0f"),
    "srv/site/index": bytes.fromhex("08211021"),
    "var/log": bytes.fromhex("08ffffffff0f1004"),
}


# umoci sets the mode before the xattr: a file or directory that keeps its owner from
# writing refuses it (EACCES), and umoci goes on without the record, warning so.
UMOCI_LOSES = re.compile(
    r'rootless\{(.+?)\} ignoring \(usually\) harmless EPERM on setxattr "' + re.escape(XATTR) + '"'
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory all may search: ``oci`` (the image's layout), ``images/owners:1.tar``
    (the same image for lazyfs) and ``home``, user 65534's."""
    assert os.geteuid() == 0, "these tests run lazyfs and umoci as user 65534: they need root"
    made = Path(tempfile.mkdtemp(prefix="lazyfs-rootless-owners-", dir="/tmp"))
    try:
        os.chmod(made, 0o755)
        layout = images.build_oci_image(tmp_path_factory.mktemp("owners"), LAYERS, "1")
        images.to_oci_dir(layout, "1", made / "oci")
        images.to_docker_archive(layout, "1", made / "images" / "owners:1.tar", "owners")
        subprocess.run(["chmod", "-R", "a+rX", str(made)], check=True)
        (made / "home").mkdir()
        os.chown(made / "home", NOBODY, NOBODY)
        yield made
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(made)], check=True)


def _provision(base: Path, container: str) -> Path:
    made = as_nobody(base, "provision", container, "owners:1", "--backend", "copy")
    assert made.returncode == 0, made.stderr
    rootfses = list((base / "home" / "work").glob(f"provisioner/containers/{container}/"
                                                  "backends/copy/rootfses/*"))  # fmt: skip
    assert len(rootfses) == 1, rootfses
    return rootfses[0]


def _records(root: Path) -> dict[str, bytes]:
    """The xattr of every path below ``root`` that has one."""
    found = {}
    for path in sorted(root.rglob("*")):
        try:
            found[str(path.relative_to(root))] = os.getxattr(path, XATTR, follow_symlinks=False)
        except OSError as error:
            if error.errno != errno.ENODATA:
                raise
    return found


def _files(root: Path) -> dict[str, tuple[str, ...]]:
    """Every path below ``root`` with its owner, type, permission bits and content."""
    found: dict[str, tuple[str, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        what = f"{info.st_uid}:{info.st_gid} {stat.filemode(info.st_mode)}"
        if stat.S_ISLNK(info.st_mode):
            found[str(path.relative_to(root))] = (what, os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            found[str(path.relative_to(root))] = (what, path.read_bytes().decode())
        else:
            found[str(path.relative_to(root))] = (what,)
    return found


def test_a_users_copy_rootfs_keeps_the_images_owners_in_xattrs(base: Path) -> None:
    rootfs = _provision(base, "owners-1")
    try:
        assert _records(rootfs) == EXPECTED  # before: {}, the owners were lost
        assert {path.lstat().st_uid for path in rootfs.rglob("*")} == {NOBODY}
        assert XATTR not in os.listxattr(rootfs)  # the root directory, root's: no record
        made = as_nobody(base, "destroy", "owners-1")
        assert made.returncode == 0, made.stderr
    finally:
        as_nobody(base, "destroy", "owners-1")


def test_a_users_copy_rootfs_has_the_owners_umoci_unpack_rootless_gives(base: Path) -> None:
    rootfs = _provision(base, "owners-2")
    bundle = base / "home" / "bundle"
    try:
        unpacked = subprocess.run(
            ["umoci", "unpack", "--rootless", "--image", f"{base / 'oci'}:1", str(bundle)],
            capture_output=True, text=True, timeout=120, cwd=base / "home", user=NOBODY,
            group=NOBODY, extra_groups=[], stdin=subprocess.DEVNULL,
            env={**os.environ, "HOME": str(base / "home")},
        )  # fmt: skip
        assert unpacked.returncode == 0, unpacked.stderr
        theirs = bundle / "rootfs"
        assert _files(rootfs) == _files(theirs)
        # Where umoci could not write the record it warned; there the copy has the
        # image's owner (EXPECTED, the test above), umoci none; elsewhere both agree.
        lost = {
            path for path in UMOCI_LOSES.findall(unpacked.stderr)
            if not (theirs / path).is_symlink() and not (theirs / path).is_fifo()
        }  # fmt: skip
        assert lost == {"etc/read-only", "srv/site", "srv/site/more"}, unpacked.stderr
        ours = _records(rootfs)
        assert {path: ours[path] for path in ours if path not in lost} == _records(theirs)
        assert os.listxattr(rootfs) == os.listxattr(theirs)
    finally:
        as_nobody(base, "destroy", "owners-2")
        subprocess.run(["rm", "-rf", "--one-file-system", str(bundle)], check=True)
