"""provision, destroy, recover and run, end to end through the CLI."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from backends.mounts import mounts_under
from backends.overlay import overlay_usable
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def test_provision_copy_gives_the_union_and_the_config(lazyfs: Lazyfs) -> None:
    out = json.loads(lazyfs("provision", "c1", "docker:busybox", "--backend", "copy").stdout)
    assert out["container_id"] == "c1"
    assert out["backend"] == "copy"
    rootfs = Path(out["rootfs"])
    assert rootfs.is_relative_to(lazyfs.work_dir / "provisioner/containers/c1/backends/copy")
    # Both layers are there: busybox from the first, /etc files from the second.
    assert (rootfs / "bin/busybox").is_file()
    assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
    assert (rootfs / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
    assert out["image"]["reference"] == "docker.io/library/busybox:latest"
    assert len(out["image"]["layers"]) == 2
    assert out["image"]["digest"].startswith("sha256:")
    assert out["config"] == {
        "entrypoint": [],
        "cmd": ["/bin/sh"],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "working_dir": "/",
        "user": "",
    }


def test_default_backend_is_overlay_where_it_works(lazyfs: Lazyfs) -> None:
    """As in Mesos: overlay when the kernel and the store's filesystem allow it."""
    out = json.loads(lazyfs("provision", "c1", "busybox").stdout)
    expected = "overlay" if overlay_usable(lazyfs.work_dir / "store" / "docker" / "tmp") else "copy"
    assert out["backend"] == expected
    assert (Path(out["rootfs"]) / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
    lazyfs("destroy", "c1")
    assert mounts_under(lazyfs.work_dir) == []


def test_second_provision_of_a_container_is_refused(lazyfs: Lazyfs) -> None:
    first = json.loads(lazyfs("provision", "c1", "busybox").stdout)
    error = one_line_error(lazyfs("provision", "c1", "busybox", check=False))
    assert "c1" in error and "already provisioned" in error
    assert Path(first["rootfs"], "etc/motd").is_file()  # the first one is untouched


def locks(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner/locks").iterdir())


def test_destroy_removes_everything(lazyfs: Lazyfs) -> None:
    lazyfs("provision", "c1", "busybox")
    assert locks(lazyfs.work_dir) == ["c1.lock"]
    lazyfs("destroy", "c1")
    assert containers(lazyfs.work_dir) == []
    assert locks(lazyfs.work_dir) == []  # its lock file too: not one per container for good
    error = one_line_error(lazyfs("destroy", "c1", check=False))
    assert "c1" in error
    assert locks(lazyfs.work_dir) == []


def test_bind_refuses_a_multi_layer_image_and_leaves_nothing(lazyfs: Lazyfs) -> None:
    error = one_line_error(lazyfs("provision", "c1", "busybox", "--backend", "bind", check=False))
    assert "exactly one layer" in error and "2" in error
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("docker:nosuchimage", "nosuchimage"),
        ("docker:busybox:nosuchtag", "nosuchtag"),
        ("docker:Busybox", "lowercase"),
        ("docker:busybox@sha256:abc", "digest"),
    ],
)
def test_bad_images_give_one_line(lazyfs: Lazyfs, image: str, expected: str) -> None:
    error = one_line_error(lazyfs("provision", "c1", image, check=False))
    assert expected in error
    assert not (lazyfs.work_dir / "provisioner/containers/c1").exists()


def test_recover_keeps_the_named_and_destroys_the_rest(lazyfs: Lazyfs) -> None:
    lazyfs("provision", "keep-me", "busybox")
    lazyfs("provision", "drop-me", "busybox")
    report = json.loads(lazyfs("recover", "--keep", "keep-me").stdout)
    assert report == {
        "kept": ["keep-me"],
        "destroyed": ["drop-me"],
        "busy": [],
        "failed": {},
        "remounted": [],
        "broken": {},
    }
    assert containers(lazyfs.work_dir) == ["keep-me"]
    # A lock file no one holds goes (an older lazyfs left one per container).
    (lazyfs.work_dir / "provisioner/locks/gone-long-ago.lock").touch()
    lazyfs("recover", "--keep", "keep-me")
    assert locks(lazyfs.work_dir) == []


def test_recover_after_a_killed_provision_leaves_a_clean_work_dir(lazyfs: Lazyfs) -> None:
    import fcntl
    import hashlib

    from lazyfs.store.disk import Store

    # Hold the store's lock on the image so the provision stops, deterministically,
    # after it recorded its work and before it finished; then kill it.
    store = Store(lazyfs.work_dir / "store" / "docker")
    key = hashlib.sha256(b"docker.io/library/busybox:latest").hexdigest()
    fd = os.open(store.locks / f"image-{key}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    process: subprocess.Popen[str] | None = None
    try:
        process = lazyfs.popen("provision", "c1", "busybox")
        marker = lazyfs.work_dir / "provisioner/containers/c1/provisioning"
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "provision never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        os.close(fd)
    assert containers(lazyfs.work_dir) == ["c1"]
    report = json.loads(lazyfs("recover", "--keep", "c1").stdout)
    assert report["destroyed"] == ["c1"]
    assert containers(lazyfs.work_dir) == []
    assert list(store.tmp.iterdir()) == []
    # And the work dir is usable again: the same id provisions.
    lazyfs("provision", "c1", "busybox")


def test_run_passes_output_and_exit_code_through(lazyfs: Lazyfs) -> None:
    result = lazyfs(
        "run", "docker:busybox", "--", "sh", "-c", "cat /etc/motd; echo $PATH; exit 7", check=False
    )
    assert result.returncode == 7, result.stderr
    assert result.stdout.splitlines() == [
        "hello from a lazyfs rootfs",
        "/usr/sbin:/usr/bin:/sbin:/bin",
    ]
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []
    assert locks(lazyfs.work_dir) == []


def test_run_uses_the_image_cmd_without_a_command(lazyfs: Lazyfs) -> None:
    # The image's Cmd is /bin/sh, which reads the (empty) stdin and exits 0.
    result = lazyfs("run", "busybox")
    assert result.returncode == 0


def test_images_lists_what_the_store_holds(lazyfs: Lazyfs) -> None:
    lazyfs("provision", "c1", "busybox")
    lines = lazyfs("images").stdout.splitlines()
    header = ["REFERENCE", "PLATFORM", "DIGEST", "LAYERS", "SIZE", "UNPACKED", "LOCAL"]
    assert lines[0].split() == header
    (listed,) = json.loads(lazyfs("images", "--json").stdout)
    assert listed["reference"] == "docker.io/library/busybox:latest"
    assert listed["platform"] == lines[1].split()[1] != ""
    assert listed["digest"].startswith("sha256:") and listed["layers"] == 2
    assert listed["size"] > 0 and listed["local"] == "100%"
    assert lazyfs("images", "-q").stdout.split() == [listed["digest"]]


def test_flags_are_accepted_with_dashes(lazyfs: Lazyfs) -> None:
    argv = [
        "--work-dir",
        str(lazyfs.work_dir),
        "--docker-registry",
        f"file://{lazyfs.image_dir}",
        "--image-provisioner-backend",
        "copy",
        "provision",
        "c1",
        "busybox",
    ]
    result = subprocess.run(
        [__import__("sys").executable, "-m", "lazyfs", *argv], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backend"] == "copy"


def test_concurrent_provisions_of_one_image_pull_it_once(lazyfs: Lazyfs) -> None:
    processes = [lazyfs.popen("--debug", "provision", cid, "busybox") for cid in ("c1", "c2")]
    # --debug is a global flag and must come first; popen puts it after the
    # other globals, which argparse accepts in any order before the command.
    try:
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    fetches = [
        line for _, stderr in outputs for line in stderr.splitlines() if "fetching blob" in line
    ]
    assert len(fetches) == 2, fetches  # two layers, each fetched by one process only
    assert containers(lazyfs.work_dir) == ["c1", "c2"]


def _cgroups(text: str) -> dict[str, str]:
    """hierarchy (controllers) -> path, from /proc/PID/cgroup text."""
    table = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        table[controllers] = path
    return table


def test_run_keeps_the_container_cgroup_under_the_callers(lazyfs: Lazyfs) -> None:
    result = lazyfs("run", "busybox", "--", "cat", "/proc/self/cgroup")
    mine = _cgroups(Path("/proc/self/cgroup").read_text())
    theirs = _cgroups(result.stdout)
    checked = 0
    for controllers, path in theirs.items():
        if controllers not in mine or controllers.startswith("name="):
            continue
        parent = mine[controllers].rstrip("/")
        assert path.startswith(f"{parent}/lazyfs/run-"), (controllers, path, parent)
        checked += 1
    assert checked > 0, result.stdout


def test_image_file_in_protobuf_json_form(lazyfs: Lazyfs, tmp_path: Path) -> None:
    image_file = tmp_path / "image.json"
    image_file.write_text(json.dumps({"type": "DOCKER", "docker": {"name": "busybox:latest"}}))
    out = json.loads(lazyfs("provision", "c1", "--image-file", str(image_file)).stdout)
    assert out["image"]["reference"] == "docker.io/library/busybox:latest"
    image_file.write_text('{"type": "DOCKER", "docker": {"nmae": "busybox"}}')
    error = one_line_error(lazyfs("provision", "c2", "--image-file", str(image_file), check=False))
    assert "nmae" in error


def test_an_appc_image_needs_the_appc_provider(lazyfs: Lazyfs) -> None:
    error = one_line_error(lazyfs("provision", "c1", "appc:example.com/app", check=False))
    assert "appc" in error
    assert containers(lazyfs.work_dir) == []


def test_run_on_a_writable_fuse_rootfs(lazyfs: Lazyfs) -> None:
    script = "echo hi > /tmp/x; cat /tmp/x; rm /etc/motd; ls /etc/motd; chmod 700 /bin; exit 3"
    result = lazyfs("run", "--backend", "fuse", "busybox", "--", "sh", "-c", script, check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == ["hi"]
    assert "No such file" in result.stderr
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []


@pytest.mark.parametrize("backend", ["overlay", "fuse"])
def test_run_with_a_relative_work_dir(lazyfs: Lazyfs, backend: str) -> None:
    # runc resolves the bundle's rootfs from the bundle, the kernel from the
    # caller's cwd: a relative work dir must not reach either as it is.
    if backend == "overlay" and not overlay_usable(lazyfs.work_dir.parent):
        pytest.skip("needs overlayfs")
    relative = os.path.relpath(lazyfs.work_dir, lazyfs.work_dir.parent)
    argv = lazyfs.argv("run", "--backend", backend, "busybox", "--", "cat", "/etc/motd")
    argv[argv.index(str(lazyfs.work_dir))] = relative
    result = subprocess.run(
        argv,
        cwd=lazyfs.work_dir.parent,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from a lazyfs rootfs\n"
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []


def test_bind_refuses_a_writable_rootfs_and_gives_a_read_only_one(lazyfs: Lazyfs) -> None:
    error = one_line_error(
        lazyfs("provision", "c1", "one", "--backend", "bind", "--writable", check=False)
    )
    assert "read-only" in error and "bind" in error
    assert containers(lazyfs.work_dir) == []
    out = json.loads(lazyfs("provision", "c1", "one", "--backend", "bind").stdout)
    assert out["writable"] is False
    with pytest.raises(OSError) as caught:
        (Path(out["rootfs"]) / "new").write_text("x")
    assert caught.value.errno == errno.EROFS
    lazyfs("destroy", "c1")


@pytest.mark.parametrize("backend", ["copy", "fuse"])
def test_run_is_writable_unless_read_only_is_asked(lazyfs: Lazyfs, backend: str) -> None:
    script = "touch /new && echo wrote"
    writable = lazyfs("run", "--backend", backend, "busybox", "--", "sh", "-c", script)
    assert writable.stdout == "wrote\n"
    read_only = lazyfs(
        "run", "--read-only", "--backend", backend, "busybox", "--", "sh", "-c", script, check=False
    )
    assert read_only.returncode == 1 and read_only.stdout == ""
    assert "Read-only file system" in read_only.stderr
    assert containers(lazyfs.work_dir) == []
    error = one_line_error(lazyfs("run", "--read-only", "--writable", "busybox", check=False))
    assert "not both" in error


EMPTY_IMAGE = (
    "lazyfs: image docker.io/library/empty:latest has no layers: no root filesystem to make"
)


@pytest.mark.parametrize("backend", ["copy", "bind", "overlay", "fuse"])
def test_an_image_of_no_layer_is_one_line_with_every_backend(lazyfs: Lazyfs, backend: str) -> None:
    result = lazyfs("provision", "c1", "empty", "--backend", backend, check=False)
    assert one_line_error(result) == EMPTY_IMAGE
    assert containers(lazyfs.work_dir) == []


def test_mounting_an_image_of_no_layer_is_one_line(lazyfs: Lazyfs, tmp_path: Path) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    assert one_line_error(lazyfs("mount", "empty", str(point), check=False)) == EMPTY_IMAGE
    assert mounts_under(tmp_path) == []
    assert not (lazyfs.work_dir / "mounts").exists()  # nothing recorded


def test_images_shows_one_unpacked_size_whichever_form_stored_it(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    """The docker-save tar (plain tar layers) and an OCI layout with gzip layers of one image."""
    gzipped, archive = tmp_path / "gzipped", tmp_path / "busybox.tar"  # skopeo splits on ':'
    shutil.copyfile(lazyfs.image_dir / "busybox:latest.tar", archive)
    subprocess.run(
        ["skopeo", "copy", "--dest-compress", f"docker-archive:{archive}", f"oci:{gzipped}:1"],
        check=True, capture_output=True,
    )  # fmt: skip
    lazyfs("provision", "plain", "busybox", "--backend", "fuse")
    lazyfs("provision", "gzip", f"oci:{gzipped}:1", "--backend", "fuse")
    try:
        listed = {i["reference"]: i for i in json.loads(lazyfs("images", "--json").stdout)}
        plain = listed["docker.io/library/busybox:latest"]
        (gzip,) = (item for name, item in listed.items() if name != plain["reference"])
        assert gzip["size"] < plain["size"]  # stored as they came
        assert gzip["unpacked"] == plain["unpacked"] is not None
    finally:
        lazyfs("destroy", "plain")
        lazyfs("destroy", "gzip")
