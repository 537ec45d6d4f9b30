"""zstd:chunked layers as stargz-snapshotter writes them (``ctr-remote --zstdchunked``).

Such a layer is a zstd stream of frames with its TOC and footer in zstd
skippable frames, and its descriptor carries eStargz's TOC digest
annotation. lazyfs reads eStargz (gzip) lazily, not this framing: the layer
is an ordinary zstd layer, pulled whole, and the image starts with every
backend. (A fuse start failed: "its descriptor gives a TOC digest, but its
blob ends in no eStargz footer".)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import images
from tests.support.containerd import Containerd, import_archive, push
from tests.support.estargz_workloads import WORKLOAD, WORKLOAD_FILES, sha
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_machine import machine
from tests.support.registry_servers import run_registry


@pytest.mark.parametrize("backend", ["fuse", "copy"])
def test_a_zstd_chunked_image_is_pulled_whole_and_starts(
    containerd: Containerd, tmp_path: Path, backend: str
) -> None:
    need_fuse()
    source = images.build_oci_image(tmp_path / "source", WORKLOAD, "src")
    base = "localhost/lazyfs-lazy/zc"
    archive = images.to_oci_archive(source, "src", tmp_path / "source.tar", f"{base}:src")
    import_archive(containerd, archive)
    containerd.ctr_remote("images", "optimize", "--no-optimize", "--oci", "--zstdchunked",
                          f"{base}:src", f"{base}:zc")  # fmt: skip
    with run_registry(tmp_path / "registry", tmp_path / "storage") as registry:
        push(containerd, f"{base}:zc", f"{registry.host}/zc:zc")
        with machine(tmp_path / "work") as m:
            image = f"docker:{registry.host}/zc:zc"
            done = m.run("provision", "a", image, "--backend", backend)
            info = json.loads(done.stdout)
            assert info["remote_layers"] == [], info
            rootfs = m.rootfses["a"] = Path(info["rootfs"])
            for path, data in sorted(WORKLOAD_FILES.items()):
                assert sha((rootfs / path).read_bytes()) == sha(data), path
