"""``images rm`` and ``images prune``: what nothing uses goes, what something uses is
refused or kept; stale leftovers go; sizes are in binary units."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from providers.mountinfo import is_mounted
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration

BUSYBOX = "docker.io/library/busybox:latest"


def layers(lazyfs: Lazyfs, name: str) -> list[str]:
    return list(json.loads(lazyfs("pull", name).stdout)["layers"])


def blob(store: Path, digest: str) -> Path:
    algo, hexdigest = digest.split(":")
    return store / "blobs" / algo / hexdigest


def layer_digests(manifest_json: str) -> list[str]:
    return [layer["digest"] for layer in json.loads(manifest_json)["layers"]]


def test_rm_refuses_an_image_a_container_uses_and_removes_it_once_destroyed(
    lazyfs: Lazyfs, store: Path
) -> None:
    digests = layer_digests(lazyfs("pull", "busybox").stdout)
    lazyfs("provision", "c1", "busybox", "--backend", "copy")

    refused = lazyfs("images", "rm", "busybox", check=False)

    assert one_line_error(refused) == (
        f"lazyfs: image {BUSYBOX} (linux/amd64) is used by container c1: "
        "destroy (or unmount) it first; nothing was removed"
    )
    assert lazyfs.stored() == [BUSYBOX]
    lazyfs("destroy", "c1")
    removed = lazyfs("images", "rm", "busybox").stdout.splitlines()
    assert removed[0] == f"removed image {BUSYBOX} (linux/amd64)"
    assert sorted(line.split()[2] for line in removed[1:-1]) == sorted(digests)
    assert re.fullmatch(r"freed \d+\.\d (KiB|MiB)", removed[-1]), removed[-1]
    assert lazyfs.stored() == []
    assert not any(blob(store, d).exists() for d in digests)
    assert not any((store / "layers" / d.split(":")[1]).exists() for d in digests)


def test_rm_of_an_image_not_stored_is_one_line_and_removes_nothing(
    lazyfs: Lazyfs, store: Path
) -> None:
    lazyfs("pull", "busybox")
    refused = lazyfs("images", "rm", "busybox", "nosuch:1.0", check=False)
    assert one_line_error(refused) == "lazyfs: no image nosuch:1.0 in the store"
    assert lazyfs.stored() == [BUSYBOX]


def test_rm_by_digest_keeps_the_layers_another_image_shares(lazyfs: Lazyfs, store: Path) -> None:
    manifest = json.loads(lazyfs("pull", "busybox").stdout)
    lazyfs("pull", "one")
    lazyfs("images", "rm", manifest["digest"][:19])
    assert lazyfs.stored() == ["docker.io/library/one:latest"]


def test_prune_keeps_what_containers_volumes_mounts_and_the_config_keep(
    lazyfs: Lazyfs, store: Path, tmp_path: Path
) -> None:
    for name in ("busybox", "one", "deep"):
        lazyfs("pull", name)
    # One container: its rootfs is one, and deep is its image volume.
    lazyfs("provision", "c1", "one", "--backend", "copy", "--volume", "/data:deep")

    config = json.dumps({"excluded_images": [{"type": "DOCKER", "docker": {"name": "busybox"}}]})
    out = lazyfs("--image_gc_config", config, "images", "prune").stdout
    assert "removed image" not in out
    assert lazyfs.stored() == [
        BUSYBOX,
        "docker.io/library/deep:latest",
        "docker.io/library/one:latest",
    ]
    refused = lazyfs("images", "rm", "deep", check=False)
    assert "is used by container c1 (volume /data):" in one_line_error(refused)

    lazyfs("destroy", "c1")
    lazyfs("provision", "c1", "one", "--backend", "copy")  # now without the volume
    out = lazyfs("images", "prune").stdout
    assert "removed image docker.io/library/deep:latest" in out
    assert "removed image docker.io/library/busybox:latest" in out
    assert lazyfs.stored() == ["docker.io/library/one:latest"]


def test_prune_keeps_an_image_a_lazyfs_mount_serves(
    lazyfs: Lazyfs, store: Path, tmp_path: Path
) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    lazyfs("mount", "busybox", str(point))
    try:
        out = lazyfs("images", "prune").stdout
        assert "removed" not in out.replace("removed leftover", "")
        assert lazyfs.stored() == [BUSYBOX]
        assert (point / "etc" / "motd").read_text() == "hello from a lazyfs rootfs\n"
        refused = lazyfs("images", "rm", "busybox", check=False)
        assert one_line_error(refused) == (
            f"lazyfs: image {BUSYBOX} (linux/amd64) is used by the lazyfs mount at {point}: "
            "destroy (or unmount) it first; nothing was removed"
        )
    finally:
        lazyfs("umount", str(point))
    assert not is_mounted(point)
    lazyfs("images", "prune")
    assert lazyfs.stored() == []


def test_gc_removes_stale_leftovers_but_keeps_what_is_current_or_mounted(
    lazyfs: Lazyfs, store: Path, tmp_path: Path
) -> None:
    digests = layer_digests(lazyfs("pull", "busybox").stdout)
    lazyfs("provision", "c1", "busybox", "--backend", "overlay")
    lazyfs("provision", "c2", "busybox", "--backend", "fuse")
    home = store / "layers" / digests[0].split(":")[1]
    current = sorted(p.name for p in home.iterdir())
    assert {"overlay-v2", "index.json"} <= set(current)
    # What older versions left: trees of earlier rules with their sidecar, a kept
    # tree that no mount loads, the chunk table of an index since rebuilt, and
    # what a killed pass left in gc/.
    for name in ("overlay", "rootfs", "overlay.1"):
        (home / name / "etc").mkdir(parents=True)
        (home / name / "etc" / "motd").write_text("old\n")
    (home / "overlay.implicit.json").write_text("[]")
    (home / "trees").mkdir(exist_ok=True)
    (home / "trees" / ("0" * 64)).write_bytes(b"not marshal data")
    (home / "estargz-chunks").write_text("{}")
    (store / "gc" / "123.1.half").mkdir(parents=True)
    (store / "gc" / "123.1.half" / "f").write_text("x")
    # An old container still stacks the old overlay tree: it stays.
    lower = tmp_path / "old-container-lower"
    lower.mkdir()
    subprocess.run(["mount", "--bind", str(home / "overlay"), str(lower)], check=True)
    try:
        report = json.loads(lazyfs("gc").stdout)
    finally:
        subprocess.run(["umount", str(lower)], check=True)
    relative = f"layers/{home.name}"
    assert sorted(report["stale"]) == sorted(
        [
            "gc/ (1 entries a stopped pass left)",
            f"{relative}/estargz-chunks",
            f"{relative}/overlay.1",
            f"{relative}/overlay.implicit.json",
            f"{relative}/rootfs",
            f"{relative}/trees/{'0' * 64}",
        ]
    )
    assert report["removed_images"] == [] and report["removed_layers"] == []
    assert sorted(p.name for p in home.iterdir()) == sorted([*current, "overlay", "trees"])
    assert list((store / "gc").iterdir()) == []
    # Once nothing mounts it, the old tree goes too; the container's rootfs reads on.
    assert json.loads(lazyfs("gc").stdout)["stale"] == [f"{relative}/overlay"]
    rootfs = Path(
        json.loads((store.parent.parent / "provisioner/containers/c1/info.json").read_text())[
            "rootfs"
        ]
    )
    assert (rootfs / "etc" / "motd").read_text() == "hello from a lazyfs rootfs\n"


def test_images_prints_sizes_in_binary_units(lazyfs: Lazyfs, store: Path) -> None:
    lazyfs("pull", "busybox")
    (row,) = lazyfs("images").stdout.splitlines()[1:]
    # SIZE and UNPACKED (the docker-save tar's layers are plain tars: known), then LOCAL.
    assert re.search(r"  \d+\.\d MiB  \d+\.\d MiB +100%$", row), row
