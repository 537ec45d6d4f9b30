"""A provision cut short (Ctrl-C at start-up, a closed stdout, a kill) leaves nothing behind,
or a container that says it is incomplete."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends.mounts import mounts_under
from lazyfs.store.disk import Store
from providers.platforms import host_platform
from tests.support.lazyfs_cli import REPO, Lazyfs, one_line_error

pytestmark = pytest.mark.integration

# Runs ``python -m lazyfs`` after planting an import hook that sends this
# process SIGINT when the module named first is about to be imported: a
# Ctrl-C while lazyfs starts up, on cue.
CTRL_C_AT_IMPORT = """
import os, runpy, signal, sys

cue = sys.argv.pop(1)

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == cue:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["lazyfs", *sys.argv[1:]]
runpy.run_module("lazyfs", run_name="__main__", alter_sys=True)
"""


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


@pytest.mark.parametrize(
    ("cue", "command"),
    [
        # Loaded by the CLI itself, before it parses the command line.
        ("lazyfs.cli_parser", ["images"]),
        # Loaded by the command as it runs: trio, the first thing a provision loads.
        ("trio", ["provision", "c1", "busybox"]),
    ],
)
def test_ctrl_c_while_lazyfs_starts_is_one_line(
    tmp_path: Path, cue: str, command: list[str]
) -> None:
    work = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_AT_IMPORT, cue, "--work_dir", str(work), *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "lazyfs: interrupted\n")
    assert not (work / "provisioner").exists()


@pytest.mark.parametrize("backend", ["copy", "fuse"])
def test_a_provision_whose_stdout_is_closed_leaves_no_container(
    lazyfs: Lazyfs, backend: str
) -> None:
    # As `lazyfs provision ... | true`: nobody reads what it prints.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            lazyfs.argv("provision", "c1", "busybox", "--backend", backend),
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    # Unlike a listing's (test_closed_stdout), this one is said: the container is undone.
    said = "lazyfs: stdout was closed before container c1 was handed over: not provisioned\n"
    assert (result.returncode, result.stderr) == (1, said)
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []
    # The id is free again.
    assert json.loads(lazyfs("provision", "c1", "busybox", "--backend", backend).stdout)
    lazyfs("destroy", "c1")


def test_a_killed_provision_leaves_a_container_that_says_it_is_incomplete(
    lazyfs: Lazyfs,
) -> None:
    # The store's lock on the image, held here, stops the provision after it
    # recorded its work and before it finished; then it is killed.
    store = Store(lazyfs.work_dir / "store" / "docker")
    # Named as DockerProvider names it: by reference and platform.
    named = f"docker.io/library/busybox:latest\n{host_platform()}"
    key = hashlib.sha256(named.encode()).hexdigest()
    fd = os.open(store.locks / f"image-{key}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    process = lazyfs.popen("provision", "c1", "busybox")
    try:
        marker = lazyfs.work_dir / "provisioner/containers/c1/provisioning"
        deadline = time.monotonic() + 60
        while not marker.exists():  # polls for a file, no timing assumed
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "provision never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(fd)
    error = one_line_error(lazyfs("provision", "c1", "busybox", check=False))
    assert error == (
        "lazyfs: container c1 is incomplete: its provision did not finish; "
        "destroy it or run recover"
    )
    lazyfs("destroy", "c1")
    assert containers(lazyfs.work_dir) == []
