"""A destroy that stopped halfway leaves a container marked as being destroyed:
``ps`` says so, and ``recover`` finishes the destroy, even for a container it is
told to keep (the agent asked for it gone, and would ask again)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from backends.base import scratch_dir
from backends.mounts import mounts_under
from tests.support import images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    layout = images.build_oci_image(
        tmp_path_factory.mktemp("data-image"),
        [[images.Entry("hello", data=b"hello from a volume\n")]],
        "v1",
    )
    return f"oci:{layout}:v1"


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


@contextmanager
def immutable(paths: list[Path]) -> Iterator[None]:
    """``paths`` cannot be removed meanwhile, by root either: a destroy stops at one."""
    subprocess.run(["chattr", "+i", *paths], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *paths], check=True)


def destroy_stopped_at(lazyfs: Lazyfs, cid: str, pinned: list[Path]) -> None:
    """``destroy cid``, which stops with an error at the first of ``pinned`` it comes to:
    what is left is what a destroy killed there leaves."""
    with immutable(pinned):
        result = lazyfs("destroy", cid, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("lazyfs: ") and "Operation not permitted" in result.stderr
    assert result.stderr.count("\n") == 1


def provision_stopped_halfway(lazyfs: Lazyfs, backend: str, data_image: str) -> Path:
    """Container ``c`` (writable, with an ``rw`` volume) whose destroy stopped halfway,
    and container ``other`` of the same ``backend``; ``c``'s rootfs."""
    args = ("--backend", backend, "--writable", "-v", f"/data:{data_image}:rw")
    info: dict[str, Any] = json.loads(lazyfs("provision", "c", "busybox", *args).stdout)
    lazyfs("provision", "other", "busybox", "--backend", backend)
    rootfs, volume = Path(info["rootfs"]), Path(info["volumes"][0]["rootfs"])
    pinned = []
    for tree in (rootfs, volume):
        (tree / "mine").write_text("the container's own\n")
        # A copy rootfs is the tree; an overlay one keeps its writes in its upper.
        pinned.append((tree if backend == "copy" else scratch_dir(tree) / "upper") / "mine")
    # Whichever of the two goes first stops the destroy: both are still there, in part.
    destroy_stopped_at(lazyfs, "c", pinned)
    assert all(path.exists() for path in pinned)
    return rootfs


@pytest.mark.parametrize("backend", ["copy", "overlay"])
def test_recover_finishes_a_destroy_that_stopped_halfway_even_for_a_kept_container(
    lazyfs: Lazyfs, data_image: str, backend: str
) -> None:
    try:
        provision_stopped_halfway(lazyfs, backend, data_image)
        # Kept or not, it is destroyed: the agent asked for that, and is told it is done.
        report = json.loads(lazyfs("recover", "--keep", "c", "other").stdout)
        assert report["destroyed"] == ["c"] and report["kept"] == ["other"]
        assert report["broken"] == {} and report["failed"] == {} and report["remounted"] == []
        assert containers(lazyfs.work_dir) == ["other"]
    finally:
        lazyfs("recover", check=False)
    assert mounts_under(lazyfs.work_dir) == []
    assert containers(lazyfs.work_dir) == []


def test_ps_shows_a_container_whose_destroy_stopped_halfway_as_destroying(
    lazyfs: Lazyfs, data_image: str
) -> None:
    try:
        rootfs = provision_stopped_halfway(lazyfs, "overlay", data_image)
        listed = {c["container_id"]: c for c in json.loads(lazyfs("ps", "--json").stdout)}
        c = listed["c"]
        assert (c["mount"], c["rootfs_mount"], c["volumes"][0]["mount"]) == ("destroying",) * 3
        assert (c["backend"], c["rootfs"], c["writable"]) == ("overlay", str(rootfs), True)
        assert c["problem"].startswith("being destroyed")
        assert listed["other"]["mount"] == "alive"
        rows = {line.split()[0]: line.split() for line in lazyfs("ps").stdout.splitlines()[1:]}
        assert rows["c"][-1] == "destroying" and rows["other"][-1] == "alive"
        # Provisioning its id again is refused, saying why: not a provision that died.
        again = lazyfs("provision", "c", "busybox", "--backend", "overlay", check=False)
        assert (again.returncode, again.stdout) == (1, "")
        assert again.stderr == (
            "lazyfs: container c is being destroyed, or its destroy died; "
            "destroy it or run recover\n"
        )
        after = {c["container_id"]: c["mount"] for c in json.loads(lazyfs("ps", "--json").stdout)}
        assert after == {"c": "destroying", "other": "alive"}
    finally:
        lazyfs("recover", check=False)
    assert mounts_under(lazyfs.work_dir) == []
