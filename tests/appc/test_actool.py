"""ACIs built and validated by actool, provisioned and run through the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support import actool
from tests.support.acis import APP, aci_file_name, manifest_doc, rootfs_of
from tests.support.lazyfs_cli import AppcLazyfs
from tests.support.tree import diff_trees, tree_digest


@pytest.fixture(scope="session")
def actool_bin() -> Path:
    reason = actool.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    return actool.build_actool()


def build_aci(
    actool_bin: Path,
    layout: Path,
    out_dir: Path,
    manifest: Mapping[str, Any],
    files: Mapping[str, bytes | str],
) -> Path:
    """The layout at ``layout``, built by ``actool build``, checked by ``actool validate``."""
    rootfs = layout / "rootfs"
    rootfs.mkdir(parents=True)
    (layout / "manifest").write_text(json.dumps(manifest))
    for name, content in files.items():
        path = rootfs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.symlink_to(content)
        else:
            path.write_bytes(content)
            path.chmod(0o755)
    aci = out_dir / aci_file_name(str(manifest["name"]))
    aci.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([actool_bin, "build", "--overwrite", layout, aci], check=True)
    subprocess.run([actool_bin, "validate", aci], check=True, capture_output=True)
    return aci


@pytest.fixture
def busybox_aci(actool_bin: Path, aci_dir: Path, tmp_path: Path) -> Path:
    files: dict[str, bytes | str] = {
        "bin/busybox": Path("/bin/busybox").read_bytes(),
        "bin/sh": "busybox",
        "etc/motd": b"built by actool\n",
    }
    return build_aci(
        actool_bin,
        tmp_path / "busybox",
        aci_dir,
        manifest_doc("example.com/busybox", app=APP),
        files,
    )


@pytest.mark.parametrize("where", ["directory", "http"])
def test_an_actool_busybox_provisions_to_its_rootfs_and_runs(
    appc_lazyfs: AppcLazyfs,
    busybox_aci: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    prefix = request.getfixturevalue("http_prefix") if where == "http" else None
    result = appc_lazyfs(
        "provision", "c1", "appc:example.com/busybox", "--backend", "copy", prefix=prefix
    )
    info = json.loads(result.stdout)
    rootfs = Path(info["rootfs"])
    # The image id is the SHA-512 of the uncompressed tar (actool gzips it).
    want_id = hashlib.sha512(gzip.decompress(busybox_aci.read_bytes())).hexdigest()
    assert info["image"]["digest"] == f"sha512:{want_id}"
    want = tree_digest(rootfs_of(busybox_aci, tmp_path / "want"), dir_mtimes=False)
    assert diff_trees(want, tree_digest(rootfs, dir_mtimes=False)) == []
    appc_lazyfs("destroy", "c1")
    run = appc_lazyfs("run", "appc:example.com/busybox", prefix=prefix)
    assert run.stdout == "hello from appc\n"


def test_an_actool_dependency_chain_applies_in_order(
    appc_lazyfs: AppcLazyfs, busybox_aci: Path, actool_bin: Path, aci_dir: Path, tmp_path: Path
) -> None:
    middle = build_aci(
        actool_bin,
        tmp_path / "middle",
        aci_dir,
        manifest_doc("example.com/middle", dependencies=[{"imageName": "example.com/busybox"}]),
        {"etc/motd": b"middle\n", "etc/middle": b"m\n"},
    )
    app = {**APP, "exec": ["/bin/sh", "-c", "cat /etc/motd /etc/top"]}
    top_manifest = manifest_doc(
        "example.com/top", app=app, dependencies=[{"imageName": "example.com/middle"}]
    )
    build_aci(actool_bin, tmp_path / "top", aci_dir, top_manifest, {"etc/top": b"top\n"})
    result = appc_lazyfs("provision", "c1", "appc:example.com/top", "--backend", "overlay")
    info = json.loads(result.stdout)
    assert len(info["image"]["layers"]) == 3
    want_dir = rootfs_of(busybox_aci, tmp_path / "want")
    shutil.copytree(
        rootfs_of(middle, tmp_path / "want-middle"), want_dir, dirs_exist_ok=True, symlinks=True
    )
    (want_dir / "etc" / "top").write_bytes(b"top\n")
    want = tree_digest(want_dir, dir_mtimes=False)
    got = tree_digest(Path(info["rootfs"]), dir_mtimes=False)
    # Contents and kinds: copytree and the test's own write do not keep mtimes.
    assert sorted(want) == sorted(got)
    assert all(want[p].sha256 == got[p].sha256 for p in want)
    run = appc_lazyfs("run", "appc:example.com/top")
    assert run.stdout == "middle\ntop\n"
