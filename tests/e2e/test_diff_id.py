"""A layer whose content is not what the image config's diff_id says is never provisioned."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.support import images
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration

LAYER = [images.Entry("etc/", kind="dir", mode=0o755), images.Entry("etc/motd", data=b"hi\n")]


def _put(layout: Path, data: bytes) -> dict[str, object]:
    hexpart = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / hexpart).write_bytes(data)
    return {"digest": f"sha256:{hexpart}", "size": len(data)}


def _with_diff_ids(source: Path, out: Path, diff_ids: list[str]) -> Path:
    """A copy of the one-image OCI layout ``source`` whose config names ``diff_ids``."""
    shutil.copytree(source, out)
    index = json.loads((out / "index.json").read_text())
    [entry] = index["manifests"]
    manifest = json.loads((out / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
    config = json.loads((out / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())
    config["rootfs"]["diff_ids"] = diff_ids
    manifest["config"] = {**manifest["config"], **_put(out, json.dumps(config).encode())}
    entry.update(_put(out, json.dumps(manifest).encode()))
    (out / "index.json").write_text(json.dumps(index))
    return out


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images.build_oci_image(tmp_path_factory.mktemp("diffid"), [LAYER])


def _blobs(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "store" / "docker" / "blobs").rglob("*") if p.is_file())


def test_a_gzip_layer_with_another_diff_id_is_refused(layout: Path, tmp_path: Path) -> None:
    wrong = "sha256:" + hashlib.sha256(b"another tar").hexdigest()
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    _with_diff_ids(layout, images_dir / "liar:latest", [wrong])
    lazyfs = Lazyfs(tmp_path / "work", images_dir)

    error = one_line_error(lazyfs("provision", "c1", "liar", "--backend", "copy", check=False))

    assert "diff_id" in error and wrong in error
    # Nothing of the image is kept: no layer blob, no container.
    layer_hex = images.layer_paths(layout, "latest")[0][0][7:]
    assert layer_hex not in _blobs(lazyfs.work_dir)
    assert not list((lazyfs.work_dir / "provisioner" / "containers").glob("*"))


def test_a_stored_layer_is_held_to_each_image_s_diff_id(layout: Path, tmp_path: Path) -> None:
    """The blob is in the store already, fetched for an honest image; a second image lies."""
    wrong = "sha256:" + hashlib.sha256(b"another tar").hexdigest()
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    shutil.copytree(layout, images_dir / "honest:latest")
    _with_diff_ids(layout, images_dir / "liar:latest", [wrong])
    lazyfs = Lazyfs(tmp_path / "work", images_dir)
    lazyfs("provision", "c1", "honest", "--backend", "copy")

    error = one_line_error(lazyfs("provision", "c2", "liar", "--backend", "copy", check=False))

    assert "diff_id" in error and wrong in error
    # The honest image still provisions from the same stored blob.
    lazyfs("provision", "c3", "honest", "--backend", "copy")
