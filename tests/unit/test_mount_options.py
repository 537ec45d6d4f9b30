"""The FUSE options of a mount process: nosuid,nodev unless asked, and only root may ask."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazyfs.fs.mount_options import mount_options
from lazyfs.provision.devmount import mount_image
from lazyfs.provision.provisioner import Provisioner
from lazyfs.store.disk import Store
from providers.errors import UsageError
from providers.image_pb2 import Image

ROOT, USER = 0, 1000


@pytest.mark.parametrize(
    ("euid", "asked", "has", "lacks"),
    [
        (ROOT, {}, {"allow_other", "nosuid", "nodev", "ro"}, {"suid", "dev"}),
        (ROOT, {"suid": True}, {"suid", "nodev"}, {"nosuid", "dev"}),
        (ROOT, {"dev": True, "writable": True}, {"nosuid", "dev"}, {"suid", "nodev", "ro"}),
        (ROOT, {"suid": True, "dev": True}, {"allow_other", "suid", "dev"}, {"nosuid", "nodev"}),
        # Without root, fusermount3 mounts nosuid,nodev anyway: asking changes nothing.
        (USER, {"suid": True, "dev": True}, {"nosuid", "nodev"}, {"allow_other", "suid", "dev"}),
    ],
)
def test_mount_options(
    monkeypatch: pytest.MonkeyPatch,
    euid: int,
    asked: dict[str, bool],
    has: set[str],
    lacks: set[str],
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    options = mount_options(**asked)
    assert has <= options
    assert not lacks & options
    assert {"default_permissions", "fsname=lazyfs"} <= options


@pytest.mark.parametrize("flag", ["suid", "dev"])
async def test_lazyfs_mount_refuses_suid_and_dev_without_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    provisioner = Provisioner(tmp_path / "work", Store(tmp_path / "store"), {})
    (tmp_path / "mnt").mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: USER)
    with pytest.raises(UsageError, match="--suid and --dev need root"):
        await mount_image(
            provisioner,
            tmp_path / "work",
            Image(type=Image.DOCKER),
            tmp_path / "mnt",
            writable=False,
            suid=flag == "suid",
            dev=flag == "dev",
        )
    assert not (tmp_path / "work" / "mounts").exists()
