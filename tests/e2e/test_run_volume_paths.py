"""``lazyfs run`` looks for what it checks before runc in the container, volumes included.

The command, its ``PATH``, its working directory, its user's /etc/passwd and
each volume's mount point are where the container has them: in the rootfs,
or in a volume's rootfs mounted over it. A volume runc could not mount (on
a file, or where a directory is missing and cannot be made) is one line
naming it, before runc runs, and leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.mounts import mounts_under
from tests.support import images
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image of /bin/tool (a script), /bin/alias -> tool and /bin/abs -> /tools/bin/tool,
    meant to be mounted at /tools; /sub an empty directory."""
    work = tmp_path_factory.mktemp("tools-image")
    layer = [
        images.Entry("bin", "dir", mode=0o755),
        images.Entry("bin/tool", data=b"#!/bin/sh\necho tool ran in $PWD\n", mode=0o755),
        images.Entry("bin/alias", "symlink", target="tool"),
        images.Entry("bin/abs", "symlink", target="/tools/bin/tool"),
        images.Entry("sub", "dir", mode=0o755),
    ]
    return f"oci:{images.build_oci_image(work, [layer], 'v1')}:v1"


@pytest.fixture(scope="module")
def etc(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image to mount at /etc: passwd and group with a user app the rootfs lacks."""
    work = tmp_path_factory.mktemp("etc-image")
    layer = [
        images.Entry("passwd", data=b"root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/srv:/bin/sh\n"),
        images.Entry("group", data=b"root:x:0:\napp:x:1234:\nstaff:x:50:app\n"),
    ]
    return f"oci:{images.build_oci_image(work, [layer], 'v1')}:v1"


def left_nothing(work: Path) -> None:
    root = work / "provisioner" / "containers"
    assert not root.is_dir() or list(root.iterdir()) == []
    assert mounts_under(work) == []


@pytest.mark.parametrize("backend", ["overlay", "fuse"])
def test_a_command_in_a_volume_runs(lazyfs: Lazyfs, tools: str, backend: str) -> None:
    volume = ("--backend", backend, "-v", f"/tools:{tools}")
    # By its path, through a relative link, and an absolute one read in the container.
    for name in ("/tools/bin/tool", "/tools/bin/alias", "/tools/bin/abs"):
        assert lazyfs("run", "busybox", *volume, "--", name).stdout == "tool ran in /\n"
    # A bare name, found through a PATH entry in the volume.
    path = ("-e", "PATH=/tools/bin:/bin")
    assert lazyfs("run", "busybox", *volume, *path, "--", "alias").stdout == "tool ran in /\n"
    # Below a directory runc makes to mount it on (the rootfs has no /opt).
    deeper = ("--backend", backend, "-v", f"/opt/tools:{tools}", "--")
    assert lazyfs("run", "busybox", *deeper, "/opt/tools/bin/alias").stdout == "tool ran in /\n"
    # An absolute link is followed from the container's root, not the volume's.
    dangling = lazyfs("run", "busybox", *deeper, "/opt/tools/bin/abs", check=False)
    assert dangling.returncode == 127
    assert one_line_error(dangling) == "lazyfs: /opt/tools/bin/abs: no such file in the container"
    # What the volume has not is still not found, in the same words as before.
    missing = lazyfs("run", "busybox", *volume, "--", "/tools/bin/none", check=False)
    assert missing.returncode == 127
    assert one_line_error(missing) == "lazyfs: /tools/bin/none: no such file in the container"
    left_nothing(lazyfs.work_dir)


def test_a_working_directory_in_a_volume_is_where_the_command_runs(
    lazyfs: Lazyfs, tools: str
) -> None:
    tool = ("--", "/tmp/bin/tool")
    ro = ("--read-only", "-v", f"/tmp:{tools}")
    ran = lazyfs("run", "busybox", *ro, "-w", "/tmp/sub", *tool)
    assert ran.stdout == "tool ran in /tmp/sub\n"
    # A relative command is taken from there, in the volume.
    ran = lazyfs("run", "busybox", *ro, "-w", "/tmp/bin", "--", "./alias")
    assert ran.stdout == "tool ran in /tmp/bin\n"
    # Missing from a read-only volume: runc could not make it.
    refused = lazyfs("run", "busybox", "-v", f"/tmp:{tools}", "-w", "/tmp/new", *tool, check=False)
    assert refused.returncode == 1
    assert one_line_error(refused) == (
        "lazyfs: the read-only volume /tmp has no working directory /tmp/new to run in"
        " (mount /tmp with :rw)"
    )
    # A read-write volume's is made, as a writable rootfs' is, also under a read-only rootfs.
    rw = ("--read-only", "-v", f"/tmp:{tools}:rw", "-w", "/tmp/new")
    assert lazyfs("run", "busybox", *rw, *tool).stdout == "tool ran in /tmp/new\n"
    on_a_file = lazyfs("run", "busybox", *ro, "-w", "/tmp/bin/tool", *tool, check=False)
    assert one_line_error(on_a_file) == (
        "lazyfs: the working directory /tmp/bin/tool is not a directory in volume /tmp"
    )
    left_nothing(lazyfs.work_dir)


def test_the_user_is_looked_up_in_a_volume_at_etc(lazyfs: Lazyfs, etc: str) -> None:
    probe = ("--", "/bin/sh", "-c", 'echo "$(id -u):$(id -g):$(id -G):$HOME"')
    result = lazyfs("run", "busybox", "-v", f"/etc:{etc}", "-u", "app", *probe)
    assert result.stdout == "1234:1234:1234 50:/srv\n"
    left_nothing(lazyfs.work_dir)


def test_a_volume_inside_a_volume_is_mounted_on_what_the_outer_one_has(
    lazyfs: Lazyfs, tools: str
) -> None:
    # The read-only rootfs has /tmp, the volume there has sub/: the inner one goes there.
    nested = ("--read-only", "-v", f"/tmp:{tools}", "-v", f"/tmp/sub:{tools}")
    assert lazyfs("run", "busybox", *nested, "--", "/tmp/sub/bin/tool").stdout == (
        "tool ran in /\n"
    )
    # The rootfs has /usr/sbin, but the volume over /usr has none, nor can it be made.
    hidden = ("--read-only", "-v", f"/usr:{tools}", "-v", f"/usr/sbin:{tools}", "--", "true")
    refused = lazyfs("run", "busybox", *hidden, check=False)
    assert one_line_error(refused) == (
        "lazyfs: volume /usr/sbin: the read-only volume /usr has no /usr/sbin to mount it on"
        " (mount /usr with :rw)"
    )
    left_nothing(lazyfs.work_dir)


def test_a_mount_point_missing_from_a_read_only_volume_is_one_line(
    lazyfs: Lazyfs, tools: str
) -> None:
    inner = ("-v", f"/data/newdir:{tools}", "--")
    refused = lazyfs("run", "busybox", "-v", f"/data:{tools}", *inner, "true", check=False)
    assert refused.returncode == 1
    assert one_line_error(refused) == (
        "lazyfs: volume /data/newdir: the read-only volume /data has no /data/newdir to mount"
        " it on (mount /data with :rw)"
    )
    left_nothing(lazyfs.work_dir)
    # In a read-write volume runc makes it, as in a writable rootfs.
    made = lazyfs("run", "busybox", "-v", f"/data:{tools}:rw", *inner, "/data/newdir/bin/tool")
    assert made.stdout == "tool ran in /\n"
    left_nothing(lazyfs.work_dir)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/motd", "/etc/motd is not a directory in the rootfs to mount it on"),
        ("/bin/sh", "/bin/sh is not a directory in the rootfs to mount it on"),  # -> busybox
        ("/etc/motd/x", "/etc/motd/x is under a file in the rootfs"),
    ],
)
@pytest.mark.parametrize("flags", [[], ["--read-only"]])
def test_a_mount_point_on_a_file_is_one_line(
    lazyfs: Lazyfs, tools: str, path: str, expected: str, flags: list[str]
) -> None:
    result = lazyfs("run", "busybox", *flags, "-v", f"{path}:{tools}", "--", "true", check=False)
    assert result.returncode == 1
    assert one_line_error(result) == f"lazyfs: volume {path}: {expected}"
    left_nothing(lazyfs.work_dir)
