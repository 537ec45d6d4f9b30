"""The fuse-lazy variant: a registry eStargz image, mounted before it is pulled, gives the
tree ``umoci unpack`` gives of the image it was converted from.

Every case of ``tests.support.backend_cases.CASES`` is converted with
``ctr-remote image optimize --no-optimize --oci`` and pushed to a loopback
registry (``lazy_cases``); ``lazyfs provision --backend fuse`` leaves every
layer remote, indexes it from its footer and TOC and reads its files chunk
by chunk through the cache daemon.  Compared as the other variants are
(names, types, modes, owners, sizes, contents, link targets, devices,
xattrs, hardlinks, mtimes of directories too), with one difference: ctr-remote
0.12 writes each TOC ``modtime`` to the second, and the nanoseconds of the
source stay in the blob's tar headers, which a lazy reader never fetches.  So
mtimes agree to the second, and ours hold no more.  eStargz's own entries
(``stargz.index.json``, the landmarks) are not in the source, so the
comparison also shows they are hidden.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.backend_cases import CASES
from tests.support.backend_variants import CaseImages, digest, fuse_usable
from tests.support.cache_daemons import kill_recorded
from tests.support.lazy_cases import LazyCases
from tests.support.tree import Node, diff_trees

pytestmark = pytest.mark.integration

_NS = 1_000_000_000


def _seconds(tree: dict[str, Node]) -> dict[str, Node]:
    return {
        path: node._replace(mtime_ns=None if node.mtime_ns is None else node.mtime_ns // _NS * _NS)
        for path, node in tree.items()
    }


def _lazyfs(work: Path, lazy: LazyCases, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(work), "--docker_registry",
            lazy.registry.url, "--cache_dir", str(work / "cache"), *args]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False
    )


@pytest.mark.parametrize("writable", [False, True], ids=["fuse-lazy-ro", "fuse-lazy-rw"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_lazy_tree_equals_umoci_unpack_of_the_source(
    case: str, writable: bool, lazy_cases: LazyCases, case_images: CaseImages, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or not fuse_usable():
        pytest.skip("needs root and FUSE (/dev/fuse, fusermount3)")
    work = tmp_path / "work"
    flags = ["--writable"] if writable else []
    try:
        done = _lazyfs(work, lazy_cases, "provision", "c1", lazy_cases.images[case],
                       "--backend", "fuse", *flags)  # fmt: skip
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert info["writable"] is writable
        # Mounted before pulling: every layer is still in the registry.
        assert set(info["remote_layers"]) == set(info["image"]["layers"])
        ours = digest(Path(info["rootfs"]))
        assert all(node.mtime_ns is None or node.mtime_ns % _NS == 0 for node in ours.values())
        differences = diff_trees(_seconds(digest(case_images.references[case])), ours)
        assert differences == [], "\n".join(differences)
    finally:
        gone = _lazyfs(work, lazy_cases, "destroy", "c1")
        kill_recorded(work / "cache")
    assert gone.returncode == 0, gone.stderr
