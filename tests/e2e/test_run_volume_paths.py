"""``lazyfs run`` looks for what it checks before runc in the container, volumes included.

The command, its ``PATH``, its working directory, its user's /etc/passwd and
each volume's mount point are where the container has them: in the rootfs,
in runc's own mounts (a tmpfs at /dev), or in a volume's rootfs mounted
over them. A volume runc could not mount (on a file, in /proc, over the
root, or where a directory is missing and cannot be made) is one line
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


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image with no /etc: /bin/busybox, /data -> / and /app -> /nowhere."""
    work = tmp_path_factory.mktemp("scratch-image")
    layer = [
        images.Entry("bin", "dir", mode=0o755),
        images.Entry("bin/busybox", data=Path("/bin/busybox").read_bytes(), mode=0o755),
        images.Entry("data", "symlink", target="/"),
        images.Entry("app", "symlink", target="/nowhere"),
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
    assert refused.returncode == 125
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
    assert refused.returncode == 125
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
    assert result.returncode == 125
    assert one_line_error(result) == f"lazyfs: volume {path}: {expected}"
    left_nothing(lazyfs.work_dir)


def test_a_volume_in_a_scratch_images_missing_etc_runs(
    lazyfs: Lazyfs, scratch: str, tools: str
) -> None:
    # runc makes /etc to mount on: it has no user tables, as the image had none.
    volume = ("-v", f"/etc/conf:{tools}")
    ran = lazyfs("run", scratch, *volume, "--", "/bin/busybox", "id")
    assert ran.stdout == "uid=0 gid=0\n"
    ran = lazyfs("run", scratch, *volume, "-u", "7", "--", "/bin/busybox", "id", "-u")
    assert ran.stdout == "7\n"
    named = lazyfs("run", scratch, *volume, "-u", "app", "--", "/bin/busybox", "true", check=False)
    assert one_line_error(named) == "lazyfs: user 'app' is not in the image's /etc/passwd"
    left_nothing(lazyfs.work_dir)


def test_runcs_own_mounts_are_in_the_container(lazyfs: Lazyfs, tools: str) -> None:
    ro = ("--read-only",)
    # A tmpfs at /dev and /dev/shm: runc makes what is missing there, on a read-only rootfs.
    ran = lazyfs("run", "busybox", *ro, "-v", f"/dev/x:{tools}", "--", "/dev/x/bin/tool")
    assert ran.stdout == "tool ran in /\n"
    assert lazyfs("run", "busybox", *ro, "-w", "/dev/shm", "--", "pwd").stdout == "/dev/shm\n"
    # What /proc and /sys hold is the kernel's: runc enters or mounts on it where it has it.
    assert lazyfs("run", "busybox", *ro, "-w", "/proc/self", "--", "pwd").stdout == "/proc/1\n"
    sys = ("-v", f"/sys/kernel:{tools}", "--", "/sys/kernel/bin/tool")
    assert lazyfs("run", "busybox", *ro, *sys).stdout == "tool ran in /\n"
    # runc mounts no volume on /proc or in it, nor makes a directory in its mqueue.
    for path, said in (
        ("/proc", "runc mounts no volume on the container's /proc or in it"),
        ("/proc/x", "runc mounts no volume on the container's /proc or in it"),
        (
            "/dev/mqueue/x",
            "runc's mqueue at /dev/mqueue has no /dev/mqueue/x to mount it on"
            " (use a path outside it)",
        ),
    ):
        refused = lazyfs("run", "busybox", "-v", f"{path}:{tools}", "--", "true", check=False)
        assert refused.returncode == 125
        assert one_line_error(refused) == f"lazyfs: volume {path}: {said}"
    left_nothing(lazyfs.work_dir)


def test_what_runc_could_not_mount_or_make_through_a_link_is_one_line(
    lazyfs: Lazyfs, scratch: str, tools: str
) -> None:
    bb = ("--", "/bin/busybox", "pwd")
    # /data -> /: a volume there would hide the whole container.
    root = lazyfs("run", scratch, "-v", f"/data:{tools}", *bb, check=False)
    assert root.returncode == 125
    assert one_line_error(root) == "lazyfs: volume /data: /data leads to the container's root"
    # /app -> /nowhere: runc makes a working directory by its own names, and /app is a link.
    for workdir in ("/app", "/app/sub"):
        dangling = lazyfs("run", scratch, "-w", workdir, *bb, check=False)
        assert dangling.returncode == 125
        assert one_line_error(dangling) == (
            f"lazyfs: the working directory {workdir} leads through a symbolic link to"
            " /nowhere, which runc cannot make"
        )
    # Through a link to a directory that is there, runc makes it.
    assert lazyfs("run", scratch, "-w", "/data/new", *bb).stdout == "/new\n"
    left_nothing(lazyfs.work_dir)
