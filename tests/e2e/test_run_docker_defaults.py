"""``lazyfs run`` gives its container what ``docker run`` gives one.

docker's capability set (root can chown; a -u user has none effective), an
/etc/hosts naming localhost and an /etc/hostname of the container's id, and
lazyfs' own open-file limits; on a read-only rootfs, or one without /etc, the
container still starts, with the files it can have.
"""

from __future__ import annotations

import re
import resource
import subprocess
from pathlib import Path

import pytest

from tests.support import images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

# docker's default set, by capability number (linux/capability.h): CHOWN 0,
# DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, SETPCAP 8,
# NET_BIND_SERVICE 10, NET_RAW 13, SYS_CHROOT 18, MKNOD 27, AUDIT_WRITE 29, SETFCAP 31.
DOCKER_CAPS = sum(1 << n for n in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31))

RUN_ID = re.compile(r"run-[0-9a-f]{12}")
BUSYBOX = Path("/bin/busybox")


def _image(tmp_path_factory: pytest.TempPathFactory, name: str, etc: str) -> str:
    """An ``oci:`` image of one layer: /bin/busybox, /proc, /sys, /dev, and an /etc with
    its own hosts and hostname (``etc`` "own"), an empty /etc ("empty") or none ("none")."""
    work = tmp_path_factory.mktemp(name)
    # With the directories runc mounts on, which it cannot make in a read-only rootfs.
    layer = [images.Entry(path, "dir", mode=0o755) for path in ("bin", "proc", "sys", "dev")]
    layer.append(images.Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755))
    if etc != "none":
        layer.append(images.Entry("etc", "dir", mode=0o755))
    if etc == "own":
        layer += [
            images.Entry("etc/hosts", data=b"10.9.9.9\timage-host\n"),
            images.Entry("etc/hostname", data=b"image\n"),
        ]
    return f"oci:{images.build_oci_image(work, [layer], 'v1')}:v1"


@pytest.fixture(scope="module")
def no_etc(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _image(tmp_path_factory, "no-etc-image", etc="none")


@pytest.fixture(scope="module")
def empty_etc(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _image(tmp_path_factory, "empty-etc-image", etc="empty")


@pytest.fixture(scope="module")
def own_etc(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _image(tmp_path_factory, "own-etc-image", etc="own")


def ran(lazyfs: Lazyfs, *args: str) -> str:
    result = lazyfs("run", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_root_in_the_container_can_chown(lazyfs: Lazyfs) -> None:
    said = ran(
        lazyfs, "busybox", "--", "sh", "-c", "touch /f && chown 1234:567 /f && stat -c %u:%g /f"
    )
    assert said == "1234:567\n"


@pytest.mark.parametrize(("user", "effective"), [("root", DOCKER_CAPS), ("nobody", 0)])
def test_the_capabilities_are_dockers(lazyfs: Lazyfs, user: str, effective: int) -> None:
    said = ran(
        lazyfs,
        "-u",
        user,
        "busybox",
        "--",
        "grep",
        "-E",
        "^Cap(Eff|Prm|Bnd|Amb)",
        "/proc/self/status",
    )
    caps = {line.split(":")[0]: int(line.split()[1], 16) for line in said.splitlines()}
    assert caps == {"CapEff": effective, "CapPrm": effective, "CapBnd": DOCKER_CAPS, "CapAmb": 0}


def test_the_hostname_is_the_container_id_and_localhost_resolves(lazyfs: Lazyfs) -> None:
    script = (
        "cat /etc/hostname; hostname; cat /etc/hosts; ping -c1 -W1 localhost >&2 && echo pinged"
    )
    lines = ran(lazyfs, "busybox", "--", "sh", "-c", script).splitlines()
    name = lines[0]  # ping's own lines went to stderr
    assert RUN_ID.fullmatch(name), lines
    assert lines[1] == name
    assert "127.0.0.1\tlocalhost" in lines
    assert "::1\tlocalhost ip6-localhost ip6-loopback" in lines
    assert f"127.0.1.1\t{name}" in lines
    assert lines[-1] == "pinged"


def test_the_open_file_limits_are_lazyfs_own(lazyfs: Lazyfs) -> None:
    def lowered() -> None:  # limits of this test's own, below any machine's default hard one
        resource.setrlimit(resource.RLIMIT_NOFILE, (456, 789))

    result = subprocess.run(
        lazyfs.argv("run", "busybox", "--", "sh", "-c", "ulimit -Sn; ulimit -Hn"),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        preexec_fn=lowered,
    )
    assert (result.returncode, result.stdout) == (0, "456\n789\n"), result.stderr


@pytest.mark.parametrize("backend", ["overlay", "fuse", "bind", "copy"])
def test_a_read_only_rootfs_without_the_files_starts(
    lazyfs: Lazyfs, empty_etc: str, backend: str
) -> None:
    # An /etc without hosts nor hostname: runc cannot make them where the rootfs is
    # read-only here, and then they are not mounted (the copy backend's rootfs is
    # writable here: runc makes them there, then makes the rootfs read-only).
    script = "hostname; cat /etc/hostname 2>/dev/null || echo no file"
    run = ("--read-only", "--backend", backend, empty_etc, "--", "/bin/busybox", "sh", "-c")
    said = ran(lazyfs, *run, script).splitlines()
    assert RUN_ID.fullmatch(said[0]), said
    assert said[1] == (said[0] if backend == "copy" else "no file")


def test_a_read_only_rootfs_gets_its_files_covered(lazyfs: Lazyfs, own_etc: str) -> None:
    script = "cat /etc/hostname /etc/hosts; echo x >>/etc/hosts || echo refused"
    lines = ran(
        lazyfs, "--read-only", own_etc, "--", "/bin/busybox", "sh", "-c", script
    ).splitlines()
    assert RUN_ID.fullmatch(lines[0]), lines
    assert "10.9.9.9\timage-host" not in lines
    assert "127.0.0.1\tlocalhost" in lines
    assert lines[-1] == "refused"  # read-only as the rootfs is


def test_a_writable_rootfs_gets_writable_files(lazyfs: Lazyfs, own_etc: str) -> None:
    script = "echo 10.1.1.1 added >>/etc/hosts && cat /etc/hosts"
    lines = ran(lazyfs, own_etc, "--", "/bin/busybox", "sh", "-c", script).splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert lines[-1] == "10.1.1.1 added"


def test_a_rootfs_without_etc_runs_and_gets_no_etc(lazyfs: Lazyfs, no_etc: str) -> None:
    script = "hostname; test -e /etc && echo made || echo none"
    said = ran(lazyfs, no_etc, "--", "/bin/busybox", "sh", "-c", script).splitlines()
    assert RUN_ID.fullmatch(said[0]), said
    assert said[1] == "none"
