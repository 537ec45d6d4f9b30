"""A Python image served by the FUSE backend: runc runs its app; tar sees the image.

The image is built from the host's Debian python3 (the interpreter, the
libraries it links and its standard library, laid out as Debian does with
/lib a symlink into /usr), so the test needs no network. A second layer adds
the app and deletes part of the standard library, so a whiteout is involved.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backends.mounts import mounts_under, unmount_all_under
from tests.support import images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
SKIP = shutil.ignore_patterns("test", "tests", "idlelib", "tkinter", "ensurepip", "__pycache__")
APP = 'import json, sys\nprint(json.dumps({"hello": "from lazyfs", "v": sys.version_info[0]}))\n'


def _libraries(binary: Path) -> list[Path]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            found.append(Path(path))
    return found


def _in_image(path: Path) -> str:
    # Debian keeps libraries under /usr; /lib and /lib64 are symlinks into it.
    relative = str(path).lstrip("/")
    return "usr/" + relative if relative.startswith(("lib/", "lib64/")) else relative


def _copy(source: Path, rootfs: Path) -> None:
    """Copy ``source`` (resolved) into the image; where it was a symlink, link it."""
    real = source.resolve()
    target = rootfs / _in_image(real)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(real, target)
    link = rootfs / _in_image(source)
    if link != target and not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/" + _in_image(real))


@pytest.fixture(scope="module")
def python_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An image directory holding pyapp:latest.tar, and its OCI layout."""
    if not PYTHON.exists():
        pytest.skip("needs Debian's python3.11 (python3.11-minimal)")
    work = tmp_path_factory.mktemp("pyimage")
    layout = work / "oci"
    images.run("umoci", "init", "--layout", layout)
    images.run("umoci", "new", "--image", f"{layout}:latest")
    bundle = work / "bundle"
    images.run("umoci", "unpack", "--image", f"{layout}:latest", bundle)
    rootfs = bundle / "rootfs"
    for name in ("usr/bin", "usr/lib", "usr/lib64", "tmp", "proc", "sys", "dev", "srv"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "lib").symlink_to("usr/lib")
    (rootfs / "lib64").symlink_to("usr/lib64")
    (rootfs / "bin").symlink_to("usr/bin")
    for path in [PYTHON, *_libraries(PYTHON)]:
        _copy(path, rootfs)
    (rootfs / "usr/bin/python3").symlink_to("python3.11")
    shutil.copytree(STDLIB, rootfs / STDLIB.relative_to("/"), symlinks=True, ignore=SKIP)
    images.run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:latest", bundle)
    (rootfs / "srv/app").mkdir()
    (rootfs / "srv/app/main.py").write_text(APP)
    shutil.rmtree(rootfs / "usr/lib/python3.11/pydoc_data")
    images.run("umoci", "repack", "--image", f"{layout}:latest", bundle)
    images.run(
        "umoci", "config", "--image", f"{layout}:latest", "--config.cmd", "python3",
        "--config.env", "PATH=/usr/bin:/bin",
    )  # fmt: skip
    directory = work / "images"
    images.to_docker_archive(layout, "latest", directory / "pyapp:latest.tar", "pyapp")
    return directory, layout


def test_runc_runs_the_app_on_a_fuse_rootfs(
    python_image: tuple[Path, Path], tmp_path: Path
) -> None:
    directory, _ = python_image
    lazyfs = Lazyfs(tmp_path / "work", directory)
    try:
        result = lazyfs("run", "--backend", "fuse", "pyapp", "--", "python3", "/srv/app/main.py")
        assert json.loads(result.stdout) == {"hello": "from lazyfs", "v": 3}
        assert list((tmp_path / "work/provisioner/containers").iterdir()) == []
    finally:
        _unmount_leftovers(tmp_path)


def test_tar_of_the_mounted_tree_equals_the_image(
    python_image: tuple[Path, Path], tmp_path: Path
) -> None:
    directory, layout = python_image
    lazyfs = Lazyfs(tmp_path / "work", directory)
    info = json.loads(lazyfs("provision", "c1", "pyapp", "--backend", "fuse").stdout)
    try:
        unpacked = images.umoci_unpack(layout, "latest", tmp_path / "umoci")
        mounted = Path(info["rootfs"])
        # The root directory's own times differ (umoci leaves it at the epoch), so
        # compare what is below it.
        assert sorted(os.listdir(mounted)) == sorted(os.listdir(unpacked))
        for name in sorted(os.listdir(unpacked)):
            assert _tar_entry(mounted, name) == _tar_entry(unpacked, name), name
    finally:
        try:
            lazyfs("destroy", "c1")
        finally:
            _unmount_leftovers(tmp_path)


def _unmount_leftovers(tmp_path: Path) -> None:
    """Whatever a failing test left mounted under ``tmp_path`` goes."""
    if mounts_under(tmp_path):
        unmount_all_under(tmp_path)


def _tar_entry(root: Path, name: str) -> bytes:
    """GNU tar of ``root/name``: names, types, modes, owners, mtimes, links, contents, xattrs.

    In name order with numeric owners; atime and ctime are left out, and the
    pax header names are fixed (by default they hold tar's pid).
    """
    return subprocess.run(
        ["tar", "--sort=name", "--numeric-owner", "--xattrs", "--xattrs-include=*",
         "--format=posix",
         "--pax-option=delete=atime,delete=ctime,exthdr.name=%d/PaxHeaders/%f",
         "-C", root, "-cf", "-", name],
        capture_output=True, check=True, env={**os.environ, "LC_ALL": "C"},
    ).stdout  # fmt: skip
