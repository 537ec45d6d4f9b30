"""`lazyfs mount` and `lazyfs umount`, end to end through the CLI."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lazyfs.fs import mount_server_client as server_client
from lazyfs.fs.mount import is_mounted
from lazyfs.provision.devmount import record_dir
from tests.support import mount_servers
from tests.support.lazyfs_cli import Lazyfs, mount_process_alive, one_line_error

pytestmark = pytest.mark.integration


@pytest.fixture
def mountpoint(tmp_path: Path, lazyfs: Lazyfs):
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    if is_mounted(point):
        lazyfs("umount", str(point), check=False)


def test_mount_shows_the_image_read_only_and_umount_takes_it_down(
    lazyfs: Lazyfs, mountpoint: Path
) -> None:
    out = json.loads(lazyfs("mount", "busybox", str(mountpoint)).stdout)
    assert out["mountpoint"] == str(mountpoint) and not out["writable"]
    # The mount point's lock file goes with the command: not one per mount for good.
    assert list((lazyfs.work_dir / "provisioner/locks").iterdir()) == []
    assert (mountpoint / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
    assert os.readlink(mountpoint / "bin/sh") == "/bin/busybox"
    with pytest.raises(OSError) as caught:
        (mountpoint / "new").write_text("x")
    assert caught.value.errno == errno.EROFS
    lazyfs("umount", str(mountpoint))
    assert not is_mounted(mountpoint)
    assert list(mountpoint.iterdir()) == []
    assert not mount_process_alive(out["pid"])
    assert list((lazyfs.work_dir / "mounts").iterdir()) == []


def test_the_first_mount_is_forked_by_the_mount_server_the_command_started_ahead(
    lazyfs: Lazyfs, mountpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(server_client.ENV)  # as a user runs it: the server where it can
    store = lazyfs.work_dir / "store" / "docker"
    try:
        out = json.loads(lazyfs("mount", "busybox", str(mountpoint)).stdout)
        assert mount_servers.parent(out["pid"]) == mount_servers.server_of(store)
        assert (mountpoint / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
        lazyfs("umount", str(mountpoint))
        assert not mount_process_alive(out["pid"])
    finally:
        mount_servers.stop(store)


def test_a_mount_server_that_cannot_start_leaves_the_mount_to_be_exec_d(
    lazyfs: Lazyfs, mountpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(server_client.ENV)
    store = lazyfs.work_dir / "store" / "docker"
    directory = server_client.server_dir(store)
    (directory / server_client.LOCK_NAME).mkdir(parents=True)  # no lock can be taken there
    result = lazyfs("mount", "busybox", str(mountpoint))
    assert "Traceback" not in result.stderr, result.stderr
    pid = json.loads(result.stdout)["pid"]
    assert (mountpoint / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
    assert server_client.server_pid(directory) is None
    lazyfs("umount", str(mountpoint))
    assert not mount_process_alive(pid)


@pytest.mark.parametrize("served", [False, True], ids=["exec'd", "forked"])
def test_a_mount_process_runs_in_the_root_not_in_its_callers_directory(
    lazyfs: Lazyfs, mountpoint: Path, monkeypatch: pytest.MonkeyPatch, served: bool
) -> None:
    # It serves for the mount's life: in the caller's directory, it kept the filesystem
    # holding that directory busy. A relative mount point still means the caller's.
    if served:
        monkeypatch.delenv(server_client.ENV)
    store = lazyfs.work_dir / "store" / "docker"
    try:
        out = json.loads(lazyfs("mount", "busybox", mountpoint.name, cwd=mountpoint.parent).stdout)
        if served:
            assert mount_servers.parent(out["pid"]) == mount_servers.server_of(store)
        assert os.readlink(f"/proc/{out['pid']}/cwd") == "/"
        assert (mountpoint / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
        lazyfs("umount", str(mountpoint))
        assert not mount_process_alive(out["pid"])
    finally:
        mount_servers.stop(store)


def test_a_mount_point_given_through_a_symlink_is_where_the_kernel_mounts(
    lazyfs: Lazyfs, mountpoint: Path
) -> None:
    # mount(2) follows the link: the mount table names the directory, which the checks
    # looked for under the link's name (`--foreground` left at once, umount found none).
    link = mountpoint.parent / "link"
    link.symlink_to(mountpoint.name)
    out = json.loads(lazyfs("mount", "busybox", str(link)).stdout)
    assert out["mountpoint"] == str(mountpoint) and is_mounted(mountpoint)
    assert (link / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
    lazyfs("umount", str(link))
    assert not is_mounted(mountpoint) and not mount_process_alive(out["pid"])


def test_a_writable_mount_takes_writes_and_forgets_them_on_umount(
    lazyfs: Lazyfs, mountpoint: Path
) -> None:
    lazyfs("mount", "busybox", str(mountpoint), "--writable")
    (mountpoint / "etc/motd").write_text("changed\n")
    (mountpoint / "bin/busybox").chmod(0o700)
    os.unlink(mountpoint / "etc/passwd")
    assert (mountpoint / "etc/motd").read_text() == "changed\n"
    assert not (mountpoint / "etc/passwd").exists()
    lazyfs("umount", str(mountpoint))
    lazyfs("mount", "busybox", str(mountpoint))
    assert (mountpoint / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
    assert (mountpoint / "etc/passwd").is_file()


def test_debug_logs_every_request_the_mount_serves(lazyfs: Lazyfs, mountpoint: Path) -> None:
    lazyfs("--debug", "mount", "busybox", str(mountpoint))
    assert (mountpoint / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
    assert not (mountpoint / "etc/nope").exists()
    # Each line is logged before its answer goes back, so it is there now.
    log = (record_dir(lazyfs.work_dir, mountpoint) / "mount.log").read_text()
    lazyfs("umount", str(mountpoint))
    lines = [line.split(": ", 1)[1] for line in log.splitlines() if "lazyfs.requests" in line]

    def logged(pattern: str) -> bool:
        return any(re.fullmatch(pattern, line) for line in lines)

    assert logged(r"lookup\(1, b'etc'\) -> ino \d+")
    assert logged(r"lookup\(\d+, b'nope'\) -> no entry \(cached\)")
    # On the no-open path (lazyfs.fs.caps) the one open answers ENOSYS.
    assert logged(r"open\(\d+, O_RDONLY\) -> (fh \d+|ENOSYS)")
    assert logged(r"read\(\d+, 0, \d+\) -> 27 bytes")


def summary(process: subprocess.Popen[str]) -> dict[str, Any]:
    """The JSON summary a ``mount --foreground`` prints once the mount is up, read whole."""
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or lines[-1] != "}\n":
        line = process.stdout.readline()
        assert line, process.communicate()
        lines.append(line)
    found: dict[str, Any] = json.loads("".join(lines))
    return found


def test_foreground_mount_unmounts_on_sigterm(lazyfs: Lazyfs, mountpoint: Path) -> None:
    process = lazyfs.popen("mount", "busybox", str(mountpoint), "--foreground")
    try:
        pid = summary(process)["pid"]
        assert (mountpoint / "etc/motd").is_file()
        process.send_signal(signal.SIGTERM)
        _, shown = process.communicate(timeout=60)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not is_mounted(mountpoint)
    assert not mount_process_alive(pid)
    # The mount's log to its end: its last line is written as it goes.
    assert shown.rstrip().endswith(f"unmounted {mountpoint}"), shown


def test_a_foreground_mount_another_umount_takes_down_ends_well(
    lazyfs: Lazyfs, mountpoint: Path
) -> None:
    # Its own unmount at the end found no mount (or a busy lock) and failed the
    # command, losing the log's last lines, though the mount went as asked.
    process = lazyfs.popen("mount", "busybox", str(mountpoint), "--foreground")
    try:
        summary(process)
        lazyfs("umount", str(mountpoint))
        _, shown = process.communicate(timeout=60)
        assert process.returncode == 0, shown
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not is_mounted(mountpoint)
    assert shown.rstrip().endswith(f"unmounted {mountpoint}"), shown


def test_mount_refuses_a_busy_or_missing_place(lazyfs: Lazyfs, mountpoint: Path) -> None:
    (mountpoint / "file").write_text("x")
    error = one_line_error(lazyfs("mount", "busybox", str(mountpoint), check=False))
    assert "not empty" in error
    missing = mountpoint.parent / "missing"
    error = one_line_error(lazyfs("mount", "busybox", str(missing), check=False))
    assert error == f"lazyfs: mount point {missing} does not exist"
    error = one_line_error(lazyfs("umount", str(mountpoint), check=False))
    assert error == f"lazyfs: no lazyfs mount at {mountpoint} (with this --work_dir)"


@pytest.mark.parametrize("fate", [signal.SIGKILL, signal.SIGSTOP], ids=["dead", "stopped"])
def test_umount_takes_down_a_mount_whose_process_died_or_stopped(
    lazyfs: Lazyfs, mountpoint: Path, fate: signal.Signals
) -> None:
    lazyfs("mount", "busybox", str(mountpoint))
    record = record_dir(lazyfs.work_dir, mountpoint)
    pid = int((record / "pid").read_text())
    (mountpoint / "etc").stat()  # the kernel keeps what it learnt: no stat asks it again
    # Read after the umount has removed the record: what the mount process logged last.
    log = (record / "mount.log").open(encoding="utf-8")
    os.kill(pid, fate)
    try:
        # Mounting over it, or under it, says what to do.
        for place in (mountpoint, mountpoint / "etc"):
            line = one_line_error(lazyfs("mount", "busybox", str(place), check=False))
            assert line.endswith(f"take it down with lazyfs umount {mountpoint}"), line
        # Looking at the mount point now asks a dead mount (ENOTCONN) or a stopped one.
        result = lazyfs("umount", str(mountpoint), check=False, timeout=60)
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mountpoint)
        assert not record.exists()
        if fate == signal.SIGSTOP:
            # Continued after SIGTERM, it ended as told, its last line written. Before: it
            # could not act on SIGTERM while stopped, and was killed (SIGKILL) 20 s later.
            assert f"unmounted {mountpoint}" in log.read()
    finally:
        log.close()
        if mount_process_alive(pid):
            os.kill(pid, signal.SIGKILL)
