"""An eStargz layer whose TOC lies about its tar: served as the TOC says while remote,
as the tar says once background fetch brought it whole and the store adopted it.

Real processes: ``lazyfs provision --backend fuse`` from a loopback
``docker-registry``, the daemon its mount starts, and the detached process
that copies the complete layer into the store and then holds the layer's TOC
index to the blob's tar (``lazyfs.index.estargz_agree``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lazyfs.cache.messages import BlobKind
from lazyfs.index.estargz_agree import VERDICT_NAME
from tests.support.cache_daemons import daemon_status, wait_for
from tests.support.estargz_writer import File, write_estargz
from tests.support.fuse_mounts import need_fuse
from tests.support.lazy_fetch import provisioned, wait_adopted
from tests.support.lazy_images import push_estargz_image
from tests.support.registry_servers import run_registry


def setuid_root(toc: dict[str, Any]) -> None:
    tool = next(e for e in toc["entries"] if e["name"] == "bin/tool")
    tool.update(mode=0o4755, uid=0)


TOOL = b"#!/bin/sh\necho tool\n" + os.urandom(256 << 10)
LYING = write_estargz(
    # No modtime: the TOC's then agrees with the tar's, and the mode is the one lie.
    [
        File("bin", type="dir", mode=0o755, modtime=""),
        File("bin/tool", TOOL, mode=0o755, uid=1000, modtime=""),
    ],
    edit_toc=setuid_root,
)


def test_a_toc_that_lies_about_its_tar_gives_way_to_the_tar_once_the_layer_is_local(
    tmp_path: Path,
) -> None:
    need_fuse()
    with run_registry(tmp_path / "registry", tmp_path / "storage") as registry:
        (layer,) = push_estargz_image(registry.url, "lazy/lying", "v1", [LYING]).layers
        work = tmp_path / "work"
        store = work / "store" / "docker"
        with provisioned(work, registry.host, "lazy/lying:v1", background=True) as info:
            assert info["remote_layers"] == [layer]
            # Remote, the TOC is what there is to go by (as in stargz-snapshotter).
            tool = Path(info["rootfs"]) / "bin/tool"
            assert tool.stat().st_mode & 0o7777 == 0o4755

            def complete() -> bool:
                found = daemon_status(work / "cache")
                return found is not None and any(
                    b.digest == layer and b.kind is BlobKind.COMPLETE for b in found.blobs
                )

            wait_for(complete, "the layer to be fetched and verified", timeout=120)
        wait_adopted(work, [layer])
        verdict = json.loads(
            (store / "layers" / layer.removeprefix("sha256:") / VERDICT_NAME).read_text()
        )
        assert verdict["agrees"] is False and "'bin/tool'" in verdict["why"]
        # Local now: the next start serves the tar's tree, as every other backend does.
        with provisioned(work, registry.host, "lazy/lying:v1", "c2", background=True) as again:
            assert again["remote_layers"] == []
            tool = Path(again["rootfs"]) / "bin/tool"
            status = tool.stat()
            assert status.st_mode & 0o7777 == 0o755 and status.st_uid == 1000
            assert tool.read_bytes() == TOOL
