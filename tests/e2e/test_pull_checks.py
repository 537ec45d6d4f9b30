"""What ``lazyfs pull`` refuses and says: an image of no layers (as every command
refuses it), a single image of another platform than ``--platform`` asks for (and one
not asked for listed as what it is), and a first pull that fetched nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from providers.platforms import host_platform
from tests.support import hand_images
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration

HOST = str(host_platform())
OTHER = "linux/s390x" if host_platform().architecture != "s390x" else "linux/arm64"


def test_a_pull_of_an_image_of_no_layers_is_refused_and_stores_nothing(lazyfs: Lazyfs) -> None:
    result = lazyfs("pull", "empty", check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert one_line_error(result) == (
        "lazyfs: image docker.io/library/empty:latest has no layers: no root filesystem to make"
    )
    assert lazyfs.stored() == []


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_pull_of_another_platform_than_asked_is_refused(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    hand_images.oci_layout(
        images / "busybox:plain", [hand_images.layer("f", b"f\n")], HOST, "plain"
    )
    lazyfs = Lazyfs(tmp_path / "work", images)
    if how == "flag":
        result = lazyfs("--platform", OTHER, "pull", "busybox:plain", check=False)
    else:
        monkeypatch.setenv("LAZYFS_PLATFORM", OTHER)
        result = lazyfs("pull", "busybox:plain", check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert one_line_error(result) == (
        f"lazyfs: docker.io/library/busybox:plain is {HOST}, not the {OTHER} asked for"
    )
    monkeypatch.delenv("LAZYFS_PLATFORM", raising=False)
    assert lazyfs.stored() == []


def test_an_image_of_another_platform_not_asked_for_is_found_in_the_store_again(
    tmp_path: Path,
) -> None:
    images = tmp_path / "images"
    hand_images.docker_archive(
        images / "foreign:1.tar", [hand_images.layer("f", b"f\n")], OTHER, "foreign:1"
    )
    lazyfs = Lazyfs(tmp_path / "work", images)
    lazyfs("pull", "foreign:1")
    (images / "foreign:1.tar").unlink()  # gone from where it came: the store has it
    lazyfs("provision", "c1", "foreign:1", "--backend", "copy")
    lazyfs("destroy", "c1")


def test_a_first_pull_whose_layers_were_all_stored_says_just_that(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("busybox", "again"):  # one image under two names: its layers are shared
        shutil.copyfile(lazyfs.image_dir / "busybox:latest.tar", images / f"{name}:latest.tar")
    shared = Lazyfs(lazyfs.work_dir, images)
    shared("pull", "busybox")
    result = shared("pull", "again")
    # Not "already stored": the image was not, until now.
    assert result.stderr == (
        "lazyfs: docker.io/library/again:latest: every layer already stored, nothing fetched\n"
    )
    assert shared.stored() == ["docker.io/library/again:latest", "docker.io/library/busybox:latest"]
