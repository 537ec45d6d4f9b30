"""runc's /dev in the container ``lazyfs run`` looks in, and the /etc its user is found in.

runc mounts a tmpfs at /dev and, once every mount is made, its device nodes
and links in it where nothing is: a volume over that /dev, or at the
/dev/null or /dev/ptmx runc uses, is refused before runc runs, and the
nodes are in the view (a working directory or command there is judged).
``bundle_config`` looks the image's user up in the container's /etc, which a
volume may be, and then never reads the rootfs' own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lazyfs.cli_container import require_workdir
from lazyfs.cli_exec import NOT_EXECUTABLE, NOT_FOUND, exec_problem, in_root
from lazyfs.cli_volumes import container_view
from lazyfs.provision import runtime
from lazyfs.provision.records import ProvisionInfo, VolumeInfo
from providers.digest import Digest
from providers.errors import BadImage, UsageError
from providers.manifest import ImageManifest, RuntimeConfig


def _manifest() -> ImageManifest:
    return ImageManifest("r", Digest("sha256:" + "0" * 64), (), RuntimeConfig())


def _info(rootfs: Path, *paths: str) -> ProvisionInfo:
    """A container of the writable ``rootfs`` with a read-only volume at each of ``paths``."""
    volumes = tuple(
        VolumeInfo(path, "ro", rootfs.parent / f"v{i}", False, _manifest())
        for i, path in enumerate(paths)
    )
    for volume in volumes:
        volume.rootfs.mkdir(parents=True, exist_ok=True)
    return ProvisionInfo("c", rootfs, "overlay", True, _manifest(), (), volumes)


def _mounts() -> list[dict[str, Any]]:
    return runtime.runc_mounts()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A rootfs with /bin/tool, /dev/ (empty, as images have it) and /devices -> /dev."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "dev").mkdir()
    (root / "devices").symlink_to("/dev")
    return root


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("/dev", "it would hide runc's tmpfs at /dev, which holds the container's device nodes"),
        (
            "/devices",
            "it would hide runc's tmpfs at /dev, which holds the container's device nodes",
        ),
        ("/dev/null", "runc makes the container's /dev/null itself, and uses it"),
        ("/devices/null/x", "runc makes the container's /dev/null itself, and uses it"),
        ("/dev/ptmx", "runc makes the container's /dev/ptmx itself, and uses it"),
    ],
)
def test_a_volume_over_runcs_dev_or_what_it_uses_there_is_refused(
    rootfs: Path, path: str, said: str
) -> None:
    with pytest.raises(UsageError) as refused:
        container_view(_info(rootfs, path), _mounts())
    assert str(refused.value) == f"volume {path}: {said}"


def test_a_volume_where_runc_would_make_a_node_it_does_not_use_stays(rootfs: Path) -> None:
    # runc makes no node where a mount is (EEXIST): the volume is what the command sees.
    view = container_view(_info(rootfs, "/dev/zero", "/dev/fd"), _mounts())
    assert in_root(view, "/dev/zero") == rootfs.parent / "v0"
    require_workdir(view, "/dev/fd")
    assert in_root(view, "/dev/fd") == rootfs.parent / "v1"


@pytest.mark.parametrize(
    ("cwd", "said"),
    [
        ("/dev/null", "the working directory /dev/null is not a directory in runc's tmpfs at /dev"),
        ("/dev/zero/x", "the working directory /dev/zero/x is under a file in runc's tmpfs at"
         " /dev"),
        # A link to pts/ptmx, the devpts' own device node.
        ("/dev/ptmx", "the working directory /dev/ptmx is not a directory in runc's devpts at"
         " /dev/pts"),
        ("/devices/tty", "the working directory /devices/tty is not a directory in runc's tmpfs"
         " at /dev"),
    ],
)  # fmt: skip
def test_a_working_directory_on_one_of_runcs_nodes_is_refused(
    rootfs: Path, cwd: str, said: str
) -> None:
    view = container_view(_info(rootfs), _mounts())
    with pytest.raises(UsageError) as refused:
        require_workdir(view, cwd)
    assert str(refused.value) == said


def test_runcs_nodes_are_what_they_are_in_the_container(rootfs: Path) -> None:
    view = container_view(_info(rootfs), _mounts())
    assert exec_problem(view, ["/dev/null"], []) == (
        "/dev/null: cannot be executed in the container: it is not a regular file",
        NOT_EXECUTABLE,
    )
    # /dev/fd and /dev/stdin lead into /proc, which runc alone sees.
    require_workdir(view, "/dev/fd")
    require_workdir(view, "/dev/stdin/x")
    assert exec_problem(view, ["/dev/stdout"], []) is None
    # The rest of the tmpfs is as it was: empty, and runc makes what is missing.
    require_workdir(view, "/dev/new")
    assert exec_problem(view, ["/dev/new"], []) == (
        "/dev/new: no such file in the container",
        NOT_FOUND,
    )


def test_bundle_config_reads_the_user_tables_of_the_etc_it_is_given(rootfs: Path) -> None:
    # The rootfs' own tables are too large to be read, and name no such user.
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "passwd").write_text("#" * (5 << 20))
    (rootfs / "etc" / "group").write_text("#" * (5 << 20))
    etc = rootfs.parent / "volume"
    etc.mkdir()
    (etc / "passwd").write_text("app:x:1234:1234::/srv:/bin/sh\n")
    (etc / "group").write_text("staff:x:50:app\n")
    config = RuntimeConfig(cmd=("true",), user="app")
    spec = runtime.bundle_config(rootfs, config, [], readonly=True, cgroups_path="x", etc=etc)
    process = spec["process"]
    assert process["user"] == {"uid": 1234, "gid": 1234, "additionalGids": [50]}
    assert "HOME=/srv" in process["env"]
    # Without it, the rootfs' own /etc is the container's.
    with pytest.raises(BadImage, match="the image's /etc/passwd is larger than"):
        runtime.bundle_config(rootfs, config, [], readonly=True, cgroups_path="x")
