"""What a user is told when the overlay backend cannot mount: one line, naming the backend.

As another user than root, ``--backend overlay`` is refused before a layer is
extracted; as root, a mount that fails gives mount(8)'s reason without the
line pointing to dmesg it adds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.overlay import mount_overlay
from providers.errors import BackendError
from tests.support.lazyfs_cli import one_line_error
from tests.support.nobody import NOBODY, as_nobody, nobodys_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def nobodys(image_dir: Path) -> Iterator[Path]:
    with nobodys_dir(image_dir, "lazyfs-overlay-") as base:
        yield base


@pytest.mark.parametrize(
    "argv",
    [
        ["provision", "c1", "busybox", "--backend", "overlay"],
        ["--image_provisioner_backend", "overlay", "provision", "c1", "busybox"],
    ],
)
def test_another_user_is_told_in_one_line_the_overlay_backend_needs_root(
    nobodys: Path, argv: list[str]
) -> None:
    line = one_line_error(as_nobody(nobodys, *argv))
    assert line == (
        f"lazyfs: the overlay backend needs root to mount overlayfs, and this is uid {NOBODY}:"
        " use --backend copy"
    )
    # Said before the layers were extracted for a mount that could not be.
    assert list((nobodys / "home" / "work").glob("store/*/layers/*/overlay-v2")) == []
    # The alternative it names works for this user.
    for command in (["provision", "c2", "busybox", "--backend", "copy"], ["destroy", "c2"]):
        done = as_nobody(nobodys, *command)
        assert done.returncode == 0, done.stderr


def test_a_failed_overlay_mount_is_one_line_of_mounts_reason(tmp_path: Path) -> None:
    (tmp_path / "merged").mkdir()
    with pytest.raises(BackendError) as caught:
        # Lower directories that do not exist: mount(8) fails, and points to dmesg.
        mount_overlay("ro,lowerdir=missing:gone", tmp_path / "merged", cwd=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"the overlay backend cannot mount {tmp_path / 'merged'}: ")
    assert "\n" not in message and "dmesg" not in message, message
    # mount's own words, without its "mount: TARGET:" said already.
    reason = message.split(": ", 1)[1]
    assert reason and "mount:" not in reason and str(tmp_path) not in reason, message
    assert list((tmp_path / "merged").iterdir()) == []


def test_another_user_is_told_in_one_line_the_bind_backend_needs_root(nobodys: Path) -> None:
    # It bind-mounted as far as mount(2) refused, then could not take down what it had
    # not mounted (umount2 answers a user EPERM for no mount point too): the container
    # stayed for good, which neither destroy nor recover could remove.
    line = one_line_error(as_nobody(nobodys, "provision", "c1", "busybox", "--backend", "bind"))
    assert line == (
        f"lazyfs: the bind backend needs root to bind-mount a layer, and this is uid {NOBODY}:"
        " use --backend copy"
    )
    listed = as_nobody(nobodys, "ps", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout


@pytest.mark.parametrize(
    "argv",
    [["run", "busybox", "--", "true"], ["run", "--backend", "overlay", "busybox", "--", "true"]],
)
def test_another_user_is_told_in_one_line_run_needs_root(nobodys: Path, argv: list[str]) -> None:
    # It pulled the image and built a rootfs, then runc said "rootless container requires
    # user namespaces": the bundle has none, so no run could ever work for a user.
    line = one_line_error(as_nobody(nobodys, *argv))
    assert line.startswith(f"lazyfs: lazyfs run needs root (this is uid {NOBODY})"), line
    assert list((nobodys / "home" / "work").glob("store/*/blobs/*/*")) == []  # nothing pulled
