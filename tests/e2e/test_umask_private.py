"""What lazyfs makes in its work dir is private whatever the umask it runs under.

A service manager may start it with ``umask 000``: anything made with a
default mode (``mkdir``, ``open(..., "w")``, ``shutil.copyfile``) would come
out 0777 or 0666 then.  The tops are 0700, but a layer tree, an index or a
record readable or writable by all is one bind mount or shared store away from
other users.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

# Image content, which keeps the modes its tar headers give: a rootfs (copied,
# or the mount point showing the image), an extracted layer tree, and the
# container's own tree over the image (overlay's top, upper and work; fuse's
# upper and work), whose directories copy the image's.
IMAGE_CONTENT = (
    ("provisioner", "containers", "*", "backends", "*", "rootfses", "*"),
    ("provisioner", "containers", "*", "backends", "*", "scratch", "*", "top"),
    ("provisioner", "containers", "*", "backends", "*", "scratch", "*", "upper"),
    ("provisioner", "containers", "*", "backends", "*", "scratch", "*", "work"),
    ("store", "docker", "layers", "*", "overlay-v2"),
)
# Blobs are read-only by design (0444, set explicitly): written once, never changed.
READ_ONLY_BLOB = ("store", "docker", "blobs", "*", "*")


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    return len(parts) == len(pattern) and all(
        p in ("*", part) for part, p in zip(parts, pattern, strict=True)
    )


def _under(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    return _matches(parts[: len(pattern)], pattern)


def _open_entries(work: Path) -> list[str]:
    """Entries lazyfs made under ``work`` that other users may read, write or enter."""
    found = []
    for top, dirs, files in os.walk(work):
        for name in sorted(dirs + files):
            path = Path(top, name)
            parts = path.relative_to(work).parts
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if any(_under(parts, pattern) for pattern in IMAGE_CONTENT):
                continue
            if stat.S_ISLNK(info.st_mode):
                continue  # 0777 always; its target's mode is what counts
            if _matches(parts, READ_ONLY_BLOB) and mode == 0o444:
                continue
            if mode & 0o077:
                found.append(f"{oct(mode)} {'/'.join(parts)}")
        # Not into image content: it may be deep, and is not ours to judge.
        dirs[:] = [
            d
            for d in dirs
            if not any(
                _under(Path(top, d).relative_to(work).parts, pattern) for pattern in IMAGE_CONTENT
            )
        ]
    return found


def _with_umask(lazyfs: Lazyfs, *args: str) -> dict[str, object]:
    """``lazyfs ARGS`` run under ``umask 000``, as a service manager may start it."""
    result = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", *lazyfs.argv(*args)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return dict(json.loads(result.stdout)) if result.stdout.strip() else {}


def test_work_dir_stays_private_under_umask_000(lazyfs: Lazyfs) -> None:
    made = []
    try:
        # copy and overlay extract layers into the store; fuse builds each layer's
        # index and the merged tree it keeps, and writable fuse an upper.
        for cid, extra in (
            ("copy", ["--backend", "copy"]),
            ("overlay", ["--backend", "overlay"]),
            ("fuse", ["--backend", "fuse"]),
            ("fuse-rw", ["--backend", "fuse", "--writable"]),
        ):
            _with_umask(lazyfs, "provision", cid, "busybox", *extra)
            made.append(cid)
        work = lazyfs.work_dir
        # What the fuse provisions stored: the indexes this test is about are there.
        assert list((work / "store" / "docker" / "layers").glob("*/index.json"))
        assert _open_entries(work) == []
    finally:
        for cid in made:
            lazyfs("destroy", cid, check=False)
