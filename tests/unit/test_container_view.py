"""A container as ``lazyfs run`` looks in it before runc: the rootfs, runc's own mounts and
the volumes over them, walked as the kernel walks a path and as runc finds a mount point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lazyfs.cli_container import require_workdir
from lazyfs.cli_exec import NOT_EXECUTABLE, NOT_FOUND, ContainerView, exec_problem, in_root
from lazyfs.cli_volumes import container_view
from lazyfs.provision import runtime
from lazyfs.provision.image_user import ImageUser, resolve_user
from lazyfs.provision.records import ProvisionInfo, VolumeInfo
from providers.digest import Digest
from providers.errors import BadImage, UsageError
from providers.manifest import ImageManifest, RuntimeConfig


def _manifest() -> ImageManifest:
    return ImageManifest("r", Digest("sha256:" + "0" * 64), (), RuntimeConfig())


def _info(rootfs: Path, writable: bool, *paths: str) -> ProvisionInfo:
    """A container of ``rootfs`` with a read-only volume at each of ``paths``."""
    volumes = tuple(
        VolumeInfo(path, "ro", rootfs.parent / f"v{i}", False, _manifest())
        for i, path in enumerate(paths)
    )
    for volume in volumes:
        volume.rootfs.mkdir(parents=True, exist_ok=True)
    return ProvisionInfo("c", rootfs, "overlay", writable, _manifest(), (), volumes)


def _runc_mounts(rootfs: Path) -> list[dict[str, Any]]:
    """The mounts runc makes of its own, as ``run`` gives them to it."""
    config = RuntimeConfig(cmd=("true",))
    mounts: list[dict[str, Any]] = runtime.bundle_config(
        rootfs, config, [], readonly=True, cgroups_path="x"
    )["mounts"]
    return mounts


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A scratch image's rootfs: no /etc, no /dev; /bin/tool, /data -> /, /app -> /nowhere."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "data").symlink_to("/")
    (root / "app").symlink_to("/nowhere")
    return root


def test_a_directory_runc_makes_has_nothing_in_it_here(rootfs: Path) -> None:
    # No /etc in the rootfs: runc makes it for the volume at /etc/conf.
    view = container_view(_info(rootfs, True, "/etc/conf"), _runc_mounts(rootfs))
    assert view.is_dir(("etc",))
    assert in_root(view, "/etc") is None and in_root(view, "/etc/passwd") is None
    assert in_root(view, "/etc/conf") == rootfs.parent / "v0"
    # So the user's tables are empty, as a scratch image's always were.
    assert resolve_user(rootfs, "", in_root(view, "/etc")) == ImageUser(0, 0, (), "/")
    assert resolve_user(rootfs, "7", rootfs / "etc") == ImageUser(7, 0, (), "/")
    problem = exec_problem(view, ["/etc"], [])
    assert problem == ("/etc: cannot be executed in the container: it is a directory", 126)


@pytest.mark.parametrize("table", ["passwd", "group"])
def test_a_table_in_the_containers_etc_is_named_as_it_has_it(tmp_path: Path, table: str) -> None:
    etc = tmp_path / "volume"
    etc.mkdir()
    (etc / table).write_text("#" * (5 << 20))
    with pytest.raises(BadImage, match=f"the image's /etc/{table} is larger than 4194304 bytes"):
        resolve_user(tmp_path, "", etc)


def test_runcs_tmpfs_mounts_are_empty_and_writable(rootfs: Path) -> None:
    # On a read-only rootfs without /dev: runc mounts a tmpfs there and makes /dev/x in it.
    view = container_view(_info(rootfs, False, "/dev/x", "/dev/shm/y"), _runc_mounts(rootfs))
    assert in_root(view, "/dev/x") == rootfs.parent / "v0"
    require_workdir(view, "/dev/shm")
    require_workdir(view, "/dev/new")
    assert in_root(view, "/dev/null") is None  # made by runc after the mounts: not here
    assert exec_problem(view, ["/dev/shm"], []) == (
        "/dev/shm: cannot be executed in the container: it is a directory",
        NOT_EXECUTABLE,
    )


def test_runcs_devpts_and_mqueue_have_no_directory_to_mount_on(rootfs: Path) -> None:
    # A new devpts or mqueue has none, and makes none (mkdir: EPERM).
    for kind, path in (("devpts", "/dev/pts"), ("mqueue", "/dev/mqueue")):
        with pytest.raises(UsageError) as refused:
            container_view(_info(rootfs, True, f"{path}/x"), _runc_mounts(rootfs))
        assert str(refused.value) == (
            f"volume {path}/x: runc's {kind} at {path} has no {path}/x to mount it on"
            " (use a path outside it)"
        )
        assert container_view(_info(rootfs, True, path), _runc_mounts(rootfs)).mounts


@pytest.mark.parametrize("path", ["/proc", "/proc/foo", "/data/proc/sys"])
def test_runc_mounts_no_volume_on_proc_or_in_it(rootfs: Path, path: str) -> None:
    with pytest.raises(UsageError) as refused:
        container_view(_info(rootfs, True, path), _runc_mounts(rootfs))
    assert str(refused.value) == (
        f"volume {path}: runc mounts no volume on the container's /proc or in it"
    )


def test_what_the_kernels_filesystems_hold_is_runcs_to_judge(rootfs: Path) -> None:
    # On a read-only rootfs: runc mounts over /sys, or on a directory the kernel has in it.
    for path in ("/sys", "/sys/kernel"):
        view = container_view(_info(rootfs, False, path), _runc_mounts(rootfs))
        assert view.mounts[-1].name == path
    view = container_view(_info(rootfs, False), _runc_mounts(rootfs))
    require_workdir(view, "/proc/self")
    require_workdir(view, "/sys/fs")
    assert exec_problem(view, ["/proc/self/exe"], []) is None
    assert exec_problem(view, ["tool"], ["PATH=/proc/nosuch:/nosuch"]) is None
    assert exec_problem(view, ["tool"], ["PATH=/nosuch"]) is not None


def test_a_volume_that_leads_to_the_root_is_refused(rootfs: Path) -> None:
    with pytest.raises(UsageError) as refused:
        container_view(_info(rootfs, True, "/data"), _runc_mounts(rootfs))
    assert str(refused.value) == "volume /data: /data leads to the container's root"


@pytest.mark.parametrize(
    ("paths", "said"),
    [
        # Mounted outer first as written: /s/in first, then /x/y/z over it.
        (
            ("/x/y/z", "/s/in"),
            "volume /x/y/z: it leads to /x/y/z, where it would hide volume /s/in",
        ),
        # Two ways to one place: the second mounted would cover the first.
        (("/s", "/x/y/z"), "volume /x/y/z: it leads to /x/y/z, where it would hide volume /s"),
    ],
)
def test_a_volume_that_would_hide_another_through_a_symlink_is_refused(
    rootfs: Path, paths: tuple[str, ...], said: str
) -> None:
    # Before, the first was mounted and covered by the second: gone from the container.
    (rootfs / "x" / "y" / "z").mkdir(parents=True)
    (rootfs / "s").symlink_to("/x/y/z")
    with pytest.raises(UsageError) as refused:
        container_view(_info(rootfs, True, *paths), _runc_mounts(rootfs))
    assert str(refused.value) == said


def test_nested_volumes_hide_nothing(rootfs: Path) -> None:
    (rootfs / "x").mkdir()
    (rootfs.parent / "v1" / "in").mkdir(parents=True)  # in the volume at /x
    view = container_view(_info(rootfs, True, "/x/in", "/x"), _runc_mounts(rootfs))
    assert in_root(view, "/x/in") == rootfs.parent / "v0"
    assert in_root(view, "/x") == rootfs.parent / "v1"


@pytest.mark.parametrize(
    ("cwd", "said"),
    [
        ("/app", "the working directory /app leads through a symbolic link to /nowhere"),
        ("/app/sub", "the working directory /app/sub leads through a symbolic link to /nowhere"),
    ],
)
def test_a_working_directory_behind_a_dangling_link_is_refused(
    rootfs: Path, cwd: str, said: str
) -> None:
    with pytest.raises(UsageError) as refused:
        require_workdir(rootfs, cwd, made=True)
    assert str(refused.value) == f"{said}, which runc cannot make"
    require_workdir(rootfs, "/data/new", made=True)  # a link to what is there: made through


def test_dot_dot_after_a_file_is_not_a_directory_but_runc_mounts_by_names(
    rootfs: Path,
) -> None:
    # The kernel fails /bin/tool/.. (ENOTDIR); runc's securejoin takes it as /bin.
    assert in_root(rootfs, "/bin/tool/../tool") is None
    problem = exec_problem(rootfs, ["/bin/tool/../tool"], [])
    assert problem == ("/bin/tool/../tool: no such file in the container", NOT_FOUND)
    assert in_root(rootfs, "/bin/../bin/tool") == rootfs / "bin" / "tool"
    view = ContainerView(rootfs, writable=True)
    place = view.find("/bin/tool/../x", past_missing=True)
    assert place is not None and (place.parts, place.there) == (("bin", "x"), 1)
    with pytest.raises(UsageError, match="is under a file in the rootfs"):
        require_workdir(view, "/bin/tool/../x")
