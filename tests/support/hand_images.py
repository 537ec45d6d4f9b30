"""Small images written byte by byte, no tools needed: an OCI layout directory (with or
without a multi-platform index above its image) and a ``docker save`` tar (manifest.json
form), each with the image config the test asks for (its ``os``, ``architecture``,
``variant``) and plain tar layers of one file each.

The local puller finds them by name in a ``--docker_registry`` directory:
``DIR/NAME:TAG`` (a layout) and ``DIR/NAME:TAG.tar`` (an archive).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from providers.manifest import OCI_INDEX, OCI_LAYER_TAR, OCI_MANIFEST

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(name: str, data: bytes) -> bytes:
    """A plain tar layer holding the one file ``name``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def config(layers: Sequence[bytes], platform: str | None, **extra: Any) -> bytes:
    """An image config of ``layers``' diff_ids stating ``platform`` (``os/arch[/variant]``;
    None: no os nor architecture at all), and ``extra`` fields over those."""
    doc: dict[str, Any] = {
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(data) for data in layers]},
    }
    if platform is not None:
        parts = platform.split("/")
        doc.update(os=parts[0], architecture=parts[1])
        if len(parts) > 2:
            doc["variant"] = parts[2]
    doc.update(extra)
    return json.dumps(doc).encode()


def oci_layout(
    root: Path,
    layers: Sequence[bytes],
    platform: str | None,
    tag: str = "latest",
    index_platform: str | None = None,
) -> Path:
    """An OCI layout at ``root`` whose index.json names ``tag``: the image itself, or with
    ``index_platform``, an image index listing it as of that platform."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(data: bytes, media_type: str, **fields: Any) -> dict[str, Any]:
        (blobs / digest_of(data).split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **fields}

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blob(config(layers, platform), OCI_CONFIG),
        "layers": [blob(data, OCI_LAYER_TAR) for data in layers],
    }
    top = blob(json.dumps(manifest).encode(), OCI_MANIFEST)
    if index_platform is not None:
        os_name, arch = index_platform.split("/")[:2]
        entry = {**top, "platform": {"os": os_name, "architecture": arch}}
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
        top = blob(json.dumps(index).encode(), OCI_INDEX)
    top["annotations"] = {REF_NAME: tag}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return root


def docker_archive(path: Path, layers: Sequence[bytes], platform: str | None, tag: str) -> Path:
    """A ``docker save`` tar at ``path`` (manifest.json form) of one image tagged ``tag``."""
    data = config(layers, platform)
    config_name = f"{digest_of(data).split(':')[1]}.json"
    names = [f"{digest_of(blob).split(':')[1]}/layer.tar" for blob in layers]
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": names}]
    members = {"manifest.json": json.dumps(manifest).encode(), config_name: data}
    members.update(zip(names, layers, strict=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path
