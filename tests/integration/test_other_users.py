"""The machine's other users never run an image's setuid binaries as root.

An image is hostile and so is a local user: a setuid-root file in an image
must give root only inside its container. Here lazyfs runs with umask 0 on a
work dir whose parent is 0755, with its Docker and Appc stores outside the
work dir, and builds a rootfs with every backend (and from an Appc image) and
a ``lazyfs mount``. Then user 65534 (``setpriv``) tries every path lazyfs
made: rootfses, the store's extracted layers, everything under the work dir
and the stores, and the mount point.

The image's ``usr/bin/euid`` is a static program, setuid root, that prints
its effective uid, so it runs the same from the host and inside a chroot of
the rootfs. Controls keep the checks honest: a setuid copy outside lazyfs
does print 0 for user 65534 (so neither the filesystem nor setpriv blocks
setuid here), and user 65534 chrooted into each rootfs gets 0 too (the
container's own view keeps setuid).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends.mounts import mounts_under, unmount_all_under
from lazyfs.fs import mount as lazy_mount
from tests.support import images
from tests.support.acis import manifest_doc, put_aci
from tests.support.fuse_mounts import alive, need_fuse
from tests.support.rich_image import need_tools

pytestmark = pytest.mark.integration

NOBODY = 65534
# setpriv keeps root's capabilities until its own execve, so the path it
# execs is looked up as root: the program it starts does the real attempt.
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "env", "--")
EACCES = "EACCES"
IMAGE = "suid:1.0"
APPC_IMAGE = "example.com/suid"
EUID_C = """#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d\\n", (int)geteuid()); return 0; }
"""
# A device node anyone may open (the null device's numbers; a hostile image's
# would be a disk's).
DEVICE = "dev/null-alike"
# (name, backend, writable) of each container provisioned from the Docker image.
CONTAINERS = (
    ("copy", "copy", False),
    ("bind", "bind", False),
    ("overlay-ro", "overlay", False),
    ("overlay-rw", "overlay", True),
    ("fuse-ro", "fuse", False),
    ("fuse-rw", "fuse", True),
)


def need_everything() -> None:
    need_fuse()
    need_tools()
    missing = [tool for tool in ("gcc", "setpriv", "chroot", "stat") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def compile_euid(directory: Path) -> bytes:
    source = directory / "euid.c"
    source.write_text(EUID_C)
    binary = directory / "euid"
    images.run("gcc", "-static", "-Os", "-s", "-o", binary, source)
    return binary.read_bytes()


def euid_as_nobody(path: Path) -> str:
    """What ``path`` prints run by user 65534 from the host, or EACCES if it cannot be reached."""
    done = subprocess.run(
        [*AS_NOBODY, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return done.stdout.strip()
    if "Permission denied" in done.stderr:
        return EACCES
    raise AssertionError(f"running {path} as nobody: {done.returncode} {done.stderr}")


def euid_inside(rootfs: Path) -> str:
    """What ``/usr/bin/euid`` prints run by user 65534 chrooted into ``rootfs`` (as a container)."""
    done = subprocess.run(
        ["chroot", f"--userspec={NOBODY}:{NOBODY}", str(rootfs), "/usr/bin/euid"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass
class Cli:
    """``lazyfs`` with umask 0, this work dir, both stores outside it, and both image sources."""

    base: Path
    work_dir: Path = field(init=False)
    docker_store: Path = field(init=False)
    appc_store: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work_dir = self.base / "work"
        self.docker_store = self.base / "docker-store"
        self.appc_store = self.base / "appc-store"

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "lazyfs",
            "--work_dir",
            str(self.work_dir),
            "--docker_store_dir",
            str(self.docker_store),
            "--appc_store_dir",
            str(self.appc_store),
            "--image_providers",
            "docker,appc",
            "--docker_registry",
            str(self.base / "images"),
            "--appc_simple_discovery_uri_prefix",
            f"{self.base / 'acis'}/",
            *args,
        ]
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
            umask=0,  # nothing may depend on the caller's umask
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
        return result

    @property
    def roots(self) -> tuple[Path, ...]:
        return (self.work_dir, self.docker_store, self.appc_store)


@contextlib.contextmanager
def open_base() -> Iterator[Path]:
    """A fresh 0755 directory that every user can reach (pytest's own are 0700).

    Everything under it is unmounted and removed afterwards.
    """
    base = Path(tempfile.mkdtemp(prefix="lazyfs-others-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        yield base
    finally:
        if mounts_under(base):
            unmount_all_under(base)
        shutil.rmtree(base)


def image_entries(euid: bytes) -> list[images.Entry]:
    return [
        images.Entry("usr", "dir", mode=0o755),
        images.Entry("usr/bin", "dir", mode=0o755),
        images.Entry("usr/bin/euid", data=euid, mode=0o4755),
        images.Entry("dev", "dir", mode=0o755),
        images.Entry(DEVICE, "char", mode=0o666, rdev=(1, 3)),
    ]


def put_images(base: Path, euid: bytes) -> None:
    """The Docker image ``suid:1.0`` and the Appc image ``example.com/suid``, both one layer."""
    layout = images.build_oci_image(base / "build", [image_entries(euid)], tag="1.0")
    images.to_docker_archive(layout, "1.0", base / "images" / f"{IMAGE}.tar", "suid")
    aci = base / "build" / "image.aci"
    with tarfile.open(aci, "w", format=tarfile.PAX_FORMAT) as tar:
        data = json.dumps(manifest_doc(APPC_IMAGE)).encode()
        info = tarfile.TarInfo("manifest")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name in ("rootfs", "rootfs/usr", "rootfs/usr/bin"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("rootfs/usr/bin/euid")
        info.mode, info.size = 0o4755, len(euid)
        tar.addfile(info, io.BytesIO(euid))
    put_aci(base / "acis", APPC_IMAGE, aci.read_bytes())


@dataclass
class Provisioned:
    cli: Cli
    rootfses: dict[str, Path]
    mountpoint: Path
    control: Path


@pytest.fixture(scope="module")
def provisioned() -> Iterator[Provisioned]:
    """Every backend's rootfs of the image, one from the Appc image, and a ``lazyfs mount``."""
    need_everything()
    with open_base() as base:
        euid = compile_euid(Path(tempfile.mkdtemp(dir=base)))
        put_images(base, euid)
        control = base / "control"
        control.write_bytes(euid)
        os.chmod(control, 0o4755)
        cli = Cli(base)
        mountpoint = base / "mnt"
        mountpoint.mkdir(mode=0o755)
        made: list[str] = []
        pids: list[tuple[Path, int]] = []
        try:
            rootfses: dict[str, Path] = {}
            for name, backend, writable in CONTAINERS:
                args = ["provision", name, IMAGE, "--backend", backend]
                out = cli(*args, *(["--writable"] if writable else []))
                made.append(name)
                rootfses[name] = Path(json.loads(out.stdout)["rootfs"])
            out = cli("provision", "appc", f"appc:{APPC_IMAGE}", "--backend", "copy")
            made.append("appc")
            rootfses["appc"] = Path(json.loads(out.stdout)["rootfs"])
            out = cli("mount", IMAGE, str(mountpoint))
            pids.append((mountpoint, json.loads(out.stdout)["pid"]))
            yield Provisioned(cli, rootfses, mountpoint, control)
        finally:
            for point, _ in pids:
                cli("umount", str(point), check=False)
            for name in made:
                cli("destroy", name, check=False)
            for point, pid in pids:
                assert not lazy_mount.is_mounted(point)
                assert not alive(pid)


def test_setuid_files_of_an_image_never_run_as_root_for_other_users(
    provisioned: Provisioned,
) -> None:
    # Controls: setuid works for nobody on this filesystem, so a refusal below is lazyfs'.
    assert euid_as_nobody(provisioned.control) == "0"
    for name, rootfs in provisioned.rootfses.items():
        # The container's own view keeps setuid...
        assert euid_inside(rootfs) == "0", name
        # ...while from outside, nobody cannot even reach the rootfs.
        assert euid_as_nobody(rootfs / "usr/bin/euid") == EACCES, name
    extracted = sorted(provisioned.cli.docker_store.glob("layers/*/*/usr/bin/euid"))
    assert {path.parents[2].name for path in extracted} >= {"rootfs-v2", "overlay-v2"}
    for path in extracted:
        assert path.stat().st_mode & stat.S_ISUID and path.stat().st_uid == 0
        assert euid_as_nobody(path) == EACCES, path
    # A person's mount is reachable where they put it, but nosuid.
    assert euid_as_nobody(provisioned.mountpoint / "usr/bin/euid") == str(NOBODY)


def test_no_path_lazyfs_made_is_reachable_by_other_users(provisioned: Provisioned) -> None:
    inside: list[str] = []
    for root in provisioned.cli.roots:
        for directory, dirs, files in os.walk(root):
            inside += [os.path.join(directory, name) for name in dirs + files]
    # Through the mounts too: every rootfs's setuid file is among them.
    assert {str(rootfs / "usr/bin/euid") for rootfs in provisioned.rootfses.values()} <= set(inside)
    reached = []
    for start in range(0, len(inside), 200):
        chunk = inside[start : start + 200]
        done = subprocess.run(
            [*AS_NOBODY, "stat", "--printf=%n\\n", "--", *chunk],
            capture_output=True,
            text=True,
            check=False,
        )
        reached += done.stdout.splitlines()
        # Refused for want of permission, each one: not gone, not some other error.
        assert done.stderr.count("Permission denied") == len(chunk) - len(done.stdout.splitlines())
    assert reached == []
    assert [stat.S_IMODE(root.stat().st_mode) for root in provisioned.cli.roots] == [0o700] * 3


def test_a_persons_mount_is_nosuid_nodev_unless_asked(provisioned: Provisioned) -> None:
    with pytest.raises(PermissionError):
        (provisioned.mountpoint / DEVICE).open("rb")
    # A container's rootfs keeps its devices, as it keeps setuid.
    (provisioned.rootfses["fuse-ro"] / DEVICE).open("rb").close()
    asked = provisioned.mountpoint.with_name("mnt-suid")
    asked.mkdir(mode=0o755)
    out = provisioned.cli("mount", IMAGE, str(asked), "--suid", "--dev")
    try:
        assert euid_as_nobody(asked / "usr/bin/euid") == "0"
        (asked / DEVICE).open("rb").close()
    finally:
        provisioned.cli("umount", str(asked))
    assert not alive(json.loads(out.stdout)["pid"])


def test_an_old_work_dir_is_closed_when_lazyfs_starts() -> None:
    with open_base() as base:
        cli = Cli(base)
        old = [
            cli.work_dir,
            cli.work_dir / "provisioner",
            cli.work_dir / "provisioner" / "containers",
            cli.work_dir / "mounts",
            cli.docker_store,
            cli.docker_store / "layers",
            cli.appc_store,
            cli.appc_store / "images",
        ]
        for directory in old:
            directory.mkdir(mode=0o755)
            os.chmod(directory, 0o755)
        cli("images")
        assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in cli.roots} == {
            str(p): 0o700 for p in cli.roots
        }
