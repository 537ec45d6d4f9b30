"""``provision`` and ``run`` with image volumes: refused early, and runc's /dev left to runc.

Every image a container needs, its rootfs's and its volumes', is fetched
before any rootfs is built, so a volume whose image is missing or has no
layer is one line naming it, with nothing built and nothing left. A volume
over runc's /dev, or at the /dev/null or /dev/ptmx runc makes there and uses,
and a working directory on one of runc's device nodes, are one line before
runc runs, not runc's log. The image's user is looked up in the container's
/etc alone when a volume is that /etc.
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
    """An image of /bin/tool, a script, as the ``oci:`` transport names it."""
    work = tmp_path_factory.mktemp("tools-image")
    layer = [
        images.Entry("bin", "dir", mode=0o755),
        images.Entry("bin/tool", data=b"#!/bin/sh\necho tool ran in $PWD\n", mode=0o755),
    ]
    return f"oci:{images.build_oci_image(work, [layer], 'v1')}:v1"


@pytest.fixture(scope="module")
def etc(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image to mount at /etc: passwd and group with a user app."""
    work = tmp_path_factory.mktemp("etc-image")
    layer = [
        images.Entry("passwd", data=b"root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/srv:/bin/sh\n"),
        images.Entry("group", data=b"root:x:0:\napp:x:1234:\nstaff:x:50:app\n"),
    ]
    return f"oci:{images.build_oci_image(work, [layer], 'v1')}:v1"


@pytest.fixture(scope="module")
def huge_etc(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image of /bin/busybox whose /etc/passwd and /etc/group are too large to be read."""
    work = tmp_path_factory.mktemp("huge-etc-image")
    layer = [
        images.Entry("bin", "dir", mode=0o755),
        images.Entry("bin/busybox", data=Path("/bin/busybox").read_bytes(), mode=0o755),
        images.Entry("etc", "dir", mode=0o755),
        images.Entry("etc/passwd", data=b"#" * (5 << 20)),
        images.Entry("etc/group", data=b"#" * (5 << 20)),
    ]
    return f"oci:{images.build_oci_image(work, [layer], 'v1')}:v1"


def left_nothing(work: Path) -> None:
    root = work / "provisioner" / "containers"
    assert not root.is_dir() or list(root.iterdir()) == []
    assert mounts_under(work) == []


@pytest.mark.parametrize("command", ["provision", "run"])
@pytest.mark.parametrize(
    ("volume", "said"),
    [
        ("missing:1", "lazyfs: volume /d: image docker.io/library/missing:1 not found in "),
        ("empty", "lazyfs: volume /d: image docker.io/library/empty:latest has no layers"),
    ],
)
def test_a_bad_volume_image_fails_before_the_rootfs_is_built(
    lazyfs: Lazyfs, command: str, volume: str, said: str
) -> None:
    # The bind backend builds no rootfs of busybox's two layers (nor a writable one, as
    # run asks): had the rootfs been built before the volume's image was fetched, that
    # would be the error.
    args = ("--backend", "bind", "-v", f"/d:{volume}")
    argv = ("provision", "c", "busybox", *args) if command == "provision" else (
        "run", "busybox", *args, "--", "true")  # fmt: skip
    result = lazyfs(*argv, check=False)
    assert result.returncode == (125 if command == "run" else 1)  # run's own error: 125
    error = one_line_error(result)
    assert error.startswith(said), error
    left_nothing(lazyfs.work_dir)


@pytest.mark.parametrize("backend", ["overlay", "fuse"])
def test_a_missing_volume_image_leaves_the_rootfs_layers_unpacked(
    lazyfs: Lazyfs, backend: str
) -> None:
    args = ("--backend", backend, "-v", "/d:missing:1", "-v", "/e:busybox", "--", "true")
    result = lazyfs("run", "busybox", *args, check=False)
    assert one_line_error(result).startswith("lazyfs: volume /d: ")
    left_nothing(lazyfs.work_dir)
    # Fetched (the blobs are stored), but neither unpacked nor indexed for a build.
    layers = lazyfs.work_dir / "store" / "docker" / "layers"
    built = [p.name for p in layers.glob("*/*") if p.name not in ("diff_id", "lock")]
    assert built == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["-v", "/dev:TOOLS"], "volume /dev: it would hide runc's tmpfs at /dev, which holds"
         " the container's device nodes"),
        (["-v", "/dev:TOOLS:rw"], "volume /dev: it would hide runc's tmpfs at /dev, which holds"
         " the container's device nodes"),
        (["-v", "/dev/null:TOOLS"], "volume /dev/null: runc makes the container's /dev/null"
         " itself, and uses it"),
        (["-v", "/dev/ptmx:TOOLS"], "volume /dev/ptmx: runc makes the container's /dev/ptmx"
         " itself, and uses it"),
        (["-w", "/dev/null"], "the working directory /dev/null is not a directory in runc's"
         " tmpfs at /dev"),
        (["-w", "/dev/zero/sub"], "the working directory /dev/zero/sub is under a file in"
         " runc's tmpfs at /dev"),
    ],
)  # fmt: skip
def test_what_runc_makes_in_its_dev_is_left_to_it_in_one_line(
    lazyfs: Lazyfs, tools: str, args: list[str], said: str
) -> None:
    argv = [arg.replace("TOOLS", tools) for arg in args]
    result = lazyfs("run", "busybox", *argv, "--", "true", check=False)
    assert result.returncode == 125
    assert one_line_error(result) == f"lazyfs: {said}"
    left_nothing(lazyfs.work_dir)


def test_a_volume_where_runc_makes_a_node_it_does_not_use_runs(lazyfs: Lazyfs, tools: str) -> None:
    # runc makes no /dev/zero over a mount: the volume stays, and is a directory to run in.
    ran = lazyfs("run", "busybox", "-v", f"/dev/zero:{tools}", "-w", "/dev/zero/bin", "--",
                 "./tool")  # fmt: skip
    assert ran.stdout == "tool ran in /dev/zero/bin\n"
    left_nothing(lazyfs.work_dir)


def test_the_user_is_looked_up_in_the_volume_at_etc_alone(
    lazyfs: Lazyfs, huge_etc: str, etc: str
) -> None:
    probe = ("--", "/bin/busybox", "sh", "-c", 'echo "$(id -u):$(id -g):$(id -G):$HOME"')
    for user, expected in (("app", "1234:1234:1234 50:/srv"), ("", "0:0:0:/root")):
        flags = ("-u", user) if user else ()
        ran = lazyfs("run", huge_etc, "-v", f"/etc:{etc}", *flags, *probe)
        assert ran.stdout == f"{expected}\n"
    # Without the volume, the rootfs' own tables are the container's: refused.
    refused = lazyfs("run", huge_etc, *probe, check=False)
    assert one_line_error(refused) == (
        "lazyfs: the image's /etc/passwd is larger than 4194304 bytes"
    )
    left_nothing(lazyfs.work_dir)
