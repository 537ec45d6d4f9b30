"""``lazyfs mount`` records written by hand, as ``lazyfs.provision.devmount`` leaves them."""

from __future__ import annotations

import json
from pathlib import Path

from lazyfs.provision.devmount import record_dir


def mount_record(work_dir: Path, mountpoint: Path, *, writable: bool = False) -> Path:
    """The record of a busybox mount at ``mountpoint`` that is not (or no longer) mounted;
    its directory. Its pid file names a process that is no mount (4242)."""
    home = record_dir(work_dir, mountpoint)
    home.mkdir(parents=True)
    image = {"reference": "docker.io/library/busybox:latest", "digest": "sha256:ab",
             "platform": "linux/amd64", "layers": []}  # fmt: skip
    (home / "image.json").write_text(json.dumps(image))
    (home / "mountpoint").write_text(f"{mountpoint}\n")
    (home / "pid").write_text("4242")
    if writable:
        (home / "upper").mkdir()
    return home
