"""A provision that fails, and whose clean-up fails too, tells its own failure."""

from __future__ import annotations

import array
import fcntl
from pathlib import Path

import pytest

from lazyfs.provision.provisioner import ProvisionInfo
from tests.support.backend_variants import docker, make_provisioner, one_image_registry

pytestmark = pytest.mark.integration

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


def set_immutable(path: Path, on: bool) -> None:
    """chattr +i / -i: not even root may remove an immutable file."""
    with path.open("rb") as file:
        flags = array.array("l", [0])
        fcntl.ioctl(file.fileno(), FS_IOC_GETFLAGS, flags, True)
        flags[0] = flags[0] | FS_IMMUTABLE_FL if on else flags[0] & ~FS_IMMUTABLE_FL
        fcntl.ioctl(file.fileno(), FS_IOC_SETFLAGS, flags)


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return one_image_registry(tmp_path)


async def test_a_clean_up_that_fails_too_does_not_hide_why_the_provision_failed(
    tmp_path: Path, registry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prov = make_provisioner(tmp_path / "work", registry)
    pinned: list[Path] = []

    def publish(info: ProvisionInfo) -> None:
        pinned.append(info.rootfs / "etc" / "motd")
        set_immutable(pinned[0], True)  # the clean-up cannot remove it
        raise BrokenPipeError("the caller went away")

    try:
        with pytest.raises(BrokenPipeError, match="the caller went away"):
            await prov.provision("c1", docker("one"), "copy", publish=publish)
        assert "container c1 is left half done" in caplog.text
        assert "Operation not permitted" in caplog.text
        # Half done, not provisioned: recover would remove it, info does not find it.
        assert not (prov.containers / "c1" / "info.json").exists()
    finally:
        for path in pinned:
            set_immutable(path, False)
    assert await prov.destroy("c1")
    assert not (prov.containers / "c1").exists()


def test_immutable_files_are_what_the_test_above_needs(tmp_path: Path) -> None:
    # The filesystem under tmp_path keeps the flag, and root may not remove such a file.
    path = tmp_path / "pinned"
    path.write_bytes(b"")
    set_immutable(path, True)
    try:
        with pytest.raises(PermissionError):
            path.unlink()
    finally:
        set_immutable(path, False)
    path.unlink()
