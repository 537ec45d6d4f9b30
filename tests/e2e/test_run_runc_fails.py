"""``lazyfs run`` exits 125 with runc's one line when runc fails to run the container, as
docker run does when its runtime fails; a container that ran exits with its own
status, whatever it is, its stderr as it wrote it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.support import images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def runc_refuses(where: Path) -> str:
    """An image runc refuses to run: its working directory is under /proc, which only
    runc sees (lazyfs leaves it to runc), and is not there, so runc's init cannot enter
    it before the command runs."""
    busybox = shutil.which("busybox")
    assert busybox is not None, "needs busybox (busybox-static)"
    layer = [
        images.Entry("bin", "dir", mode=0o755),
        images.Entry("bin/busybox", data=Path(busybox).read_bytes(), mode=0o755),
        images.Entry("bin/sh", "symlink", target="busybox"),
    ]
    config = images.ImageConfig(cmd=("/bin/sh",), env=("PATH=/bin",))
    layout = images.build_oci_image(where / "layout", [layer], "latest", config)
    # Put in the config blob by hand, as a hostile image would.
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]))
    image_config = json.loads(_blob(layout, manifest["config"]["digest"]))
    image_config["config"]["WorkingDir"] = "/proc/lazyfs-nowhere"
    manifest["config"] = _put(layout, json.dumps(image_config).encode()) | {
        "mediaType": manifest["config"]["mediaType"]
    }
    index["manifests"][0] |= _put(layout, json.dumps(manifest).encode())
    (layout / "index.json").write_text(json.dumps(index))
    return f"oci:{layout}:latest"


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def _put(layout: Path, data: bytes) -> dict[str, str | int]:
    """Store ``data`` as a blob of ``layout``: its digest and size, for a descriptor."""
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def test_runc_failing_exits_125_with_one_line(lazyfs: Lazyfs, tmp_path: Path) -> None:
    result = lazyfs("run", runc_refuses(tmp_path), "--", "sh", "-c", "echo ran", check=False)
    assert result.returncode == 125
    # runc's own line, and only it: with its log in a file it says why once, plainly.
    (line,) = result.stderr.splitlines()
    assert line.startswith("runc run failed: "), result.stderr
    assert "/proc/lazyfs-nowhere" in line
    assert result.stdout == ""
    assert containers(lazyfs.work_dir) == []


def test_a_command_exiting_1_exits_1_its_stderr_untouched(lazyfs: Lazyfs) -> None:
    script = "echo out; echo err >&2; printf 'no end of line' >&2; exit 1"
    result = lazyfs("run", "busybox", "--", "sh", "-c", script, check=False)
    assert result.returncode == 1
    assert result.stdout == "out\n"
    assert result.stderr == "err\nno end of line"


def test_a_command_exiting_125_exits_125_with_nothing_from_lazyfs(lazyfs: Lazyfs) -> None:
    result = lazyfs("run", "busybox", "--", "sh", "-c", "exit 125", check=False)
    assert result.returncode == 125
    assert result.stderr == ""
