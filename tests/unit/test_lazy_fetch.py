"""Which layers ``fetch_lazy`` leaves remote: only a registry image's eStargz layers.

An image named by a local transport (``oci:DIR``) is read from its files,
never by range through the cache daemon, even when its layers carry the
eStargz annotation and ``--docker_registry`` is a registry URL (the default).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
from pathlib import Path

import trio

from lazyfs.images.docker import DockerProvider
from lazyfs.progress import Progress
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.image_pb2 import Image
from providers.manifest import TOC_DIGEST_ANNOTATION


def _layout(root: Path) -> tuple[Path, str]:
    """An OCI layout, tag 1.0, of one gzip layer annotated as eStargz; its layer digest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        hexdigest = hashlib.sha256(data).hexdigest()
        (blobs / hexdigest).write_bytes(data)
        return "sha256:" + hexdigest

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        member = tarfile.TarInfo("motd")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"hi\n"))
    layer = gzip.compress(raw.getvalue())
    layer_digest = put(layer)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    rootfs = {"type": "layers", "diff_ids": [diff_id]}
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(layer),
                    "annotations": {TOC_DIGEST_ANNOTATION: "sha256:" + "1" * 64},
                }
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "1.0"},
            }
        ],
    }
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps(index))
    return root, layer_digest


def test_a_local_transport_image_is_pulled_whole_even_with_estargz_layers(tmp_path: Path) -> None:
    layout, layer = _layout(tmp_path / "layout")
    store = Store(tmp_path / "store")
    provider = DockerProvider(store, "https://registry.invalid")
    image = Image(type=Image.DOCKER)
    image.docker.name = f"oci:{layout}:1.0"
    manifest = trio.run(provider.fetch_lazy, image, Progress(enabled=False))
    assert [stored.digest for stored in manifest.layers] == [layer]
    assert store.has_blob(Digest(layer))


def test_a_local_transport_image_loads_nothing_ahead(tmp_path: Path) -> None:
    layout, _ = _layout(tmp_path / "layout")
    provider = DockerProvider(Store(tmp_path / "store"), "https://registry.invalid")
    image = Image(type=Image.DOCKER)
    image.docker.name = f"oci:{layout}:1.0"
    called: list[str] = []
    trio.run(provider.fetch_lazy, image, Progress(enabled=False), lambda: called.append("x"))
    for thread in threading.enumerate():
        if thread.name == "lazyfs-imports":
            thread.join(10)
    assert called == []
