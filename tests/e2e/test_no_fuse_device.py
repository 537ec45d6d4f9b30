"""Without a usable /dev/fuse, every command that needs the fuse backend says so
first, in one line, before it pulls the image or records a container.

The command runs in a mount namespace of its own where /dev/fuse is a device
node of no driver (0:0, which opens as ENXIO): the host's is never touched.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs, one_line_error

WORDS = "the fuse backend needs the fuse kernel module (modprobe fuse)"


@pytest.fixture
def no_fuse(tmp_path: Path) -> Path:
    node = tmp_path / "no-fuse"
    os.mknod(node, 0o600 | 0o020000, os.makedev(0, 0))  # S_IFCHR
    return node


def without_fuse(node: Path, lazyfs: Lazyfs, *args: str) -> subprocess.CompletedProcess[str]:
    """``lazyfs ARGS`` in a private mount namespace whose /dev/fuse is ``node``."""
    script = 'mount --bind "$1" /dev/fuse && shift && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(node)]
    return subprocess.run(
        [*argv, *lazyfs.argv(*args)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    "command",
    [
        ("provision", "--backend", "fuse", "c1", "busybox:latest"),
        ("--image_provisioner_backend", "fuse", "provision", "c1", "busybox:latest"),
        ("run", "--backend", "fuse", "busybox:latest", "--", "true"),
        ("mount", "busybox:latest", "MOUNTPOINT"),
    ],
    ids=["provision", "default backend", "run", "mount"],
)
def test_a_missing_fuse_device_is_said_first(
    lazyfs: Lazyfs, no_fuse: Path, tmp_path: Path, command: tuple[str, ...]
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    args = [str(mountpoint) if arg == "MOUNTPOINT" else arg for arg in command]
    error = one_line_error(without_fuse(no_fuse, lazyfs, *args))
    assert error.startswith(f"lazyfs: /dev/fuse: {os.strerror(errno.ENXIO)}: {WORDS}"), error
    # Said before anything: no image pulled, no container recorded, nothing mounted.
    assert lazyfs.stored() == []
    assert lazyfs("ps").stdout.splitlines()[1:] == []
    assert list(mountpoint.iterdir()) == []
