"""Image GC keeps everything while what some mount uses is unknown.

A ``lazyfs mount`` record without a readable image, or a live mount process
of the store whose command line was cut (a forked one's is cut to the room
its server has: ``lazyfs.fs.mount_server_child.set_title``) may use any
image: ``images prune`` removes none, ``images rm`` refuses, until it is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazyfs.fs.mount_server_child import MOUNT_MODULE
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration

BUSYBOX = "docker.io/library/busybox:latest"
# Writes the title in TITLE over its own command line, as a forked mount process does.
CUT = (
    "import json, os, sys\n"
    "from lazyfs.fs.mount_server_child import set_title\n"
    "set_title(json.loads(os.environ['TITLE']))\n"
    "print(flush=True)\n"
    "sys.stdin.read()\n"
)


def test_an_unreadable_mount_record_keeps_every_image(lazyfs: Lazyfs, store: Path) -> None:
    lazyfs("pull", "busybox")
    record = lazyfs.work_dir / "mounts" / "m1"
    record.mkdir(parents=True)  # a record whose image.json is missing

    assert "removed image" not in lazyfs("images", "prune").stdout
    assert lazyfs.stored() == [BUSYBOX]
    refused = one_line_error(lazyfs("images", "rm", "busybox", check=False))
    assert f"the lazyfs mount record {record} (what it uses is unknown)" in refused
    assert refused.endswith("nothing was removed")

    record.rmdir()
    assert f"removed image {BUSYBOX}" in lazyfs("images", "prune").stdout
    assert lazyfs.stored() == []


def test_a_mount_process_whose_command_line_is_cut_keeps_every_image(
    lazyfs: Lazyfs, store: Path, tmp_path: Path
) -> None:
    digests = [layer["digest"] for layer in json.loads(lazyfs("pull", "busybox").stdout)["layers"]]
    layer = json.dumps({"digest": digests[0], "media_type": "x", "size": 1, "pad": "x" * 200})
    head = [sys.executable, "-P", "-m", MOUNT_MODULE]
    head += ["--mountpoint", str(tmp_path / "mnt"), "--store", str(store.absolute())]
    title = [*head, *["--layer", layer] * 20, "--ready-fd", "3"]
    # Room for the head and a few layers: the rest is cut, as past TITLE_ROOM.
    room = " " * (len("\0".join(head)) + 600)
    process = subprocess.Popen(
        [sys.executable, "-c", CUT, room],
        env={**os.environ, "TITLE": json.dumps(title)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # its title is written
        shown = Path(f"/proc/{process.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert shown[: len(head)] == [os.fsencode(word) for word in head]
        assert b"--ready-fd" not in shown  # cut

        assert "removed image" not in lazyfs("images", "prune").stdout
        assert lazyfs.stored() == [BUSYBOX]
        refused = one_line_error(lazyfs("images", "rm", "busybox", check=False))
        assert f"mount process {process.pid} (what it uses is unknown)" in refused
    finally:
        process.communicate()  # closes its stdin: it ends
    assert f"removed image {BUSYBOX}" in lazyfs("images", "prune").stdout
    assert lazyfs.stored() == []


def test_another_users_process_naming_layers_keeps_nothing(
    lazyfs: Lazyfs, store: Path, tmp_path: Path
) -> None:
    # Any user may write a mount process's command line, with layers read from a real one's.
    digests = [layer["digest"] for layer in json.loads(lazyfs("pull", "busybox").stdout)["layers"]]
    head = [sys.executable, "-P", "-m", MOUNT_MODULE]
    head += ["--mountpoint", str(tmp_path / "mnt"), "--store", str(store.absolute())]
    for digest in digests:
        head += ["--layer", json.dumps({"digest": digest})]
    title = [*head, "--ready-fd", "3"]
    process = subprocess.Popen(
        [sys.executable, "-c", CUT, " " * (len("\0".join(title)) + 16)],
        env={**os.environ, "TITLE": json.dumps(title)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        user=65534,
        group=65534,
        extra_groups=[],
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # its title is written
        shown = Path(f"/proc/{process.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert shown == [os.fsencode(word) for word in title]
        assert f"removed image {BUSYBOX}" in lazyfs("images", "rm", "busybox").stdout
        assert lazyfs.stored() == []
    finally:
        process.communicate()
