"""ACIs made with tarfile: manifests, images, their file names in a directory.

``aci_bytes`` builds an ACI from a manifest and ``rootfs/`` files (a str
value is a symlink target), compressed as asked; ``put_aci`` stores it under
the name simple discovery and the store look for.  ``APP`` is an app section
that runs the host's busybox, and ``rootfs_of`` what GNU tar makes of an
ACI's ``rootfs/``: the tree a provision must equal.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from providers.appc_store import host_arch


def manifest_doc(
    name: str,
    *,
    version: str = "latest",
    app: dict[str, Any] | None = None,
    dependencies: list[dict[str, Any]] | None = None,
    path_whitelist: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "acKind": "ImageManifest",
        "acVersion": "0.8.11",
        "name": name,
        "labels": [
            {"name": "version", "value": version},
            {"name": "os", "value": "linux"},
            {"name": "arch", "value": host_arch()},
        ],
    }
    if app is not None:
        doc["app"] = app
    if dependencies:
        doc["dependencies"] = dependencies
    if path_whitelist:
        doc["pathWhitelist"] = path_whitelist
    doc.update(extra)
    return doc


def aci_bytes(
    manifest: Mapping[str, Any] | bytes | None,
    files: Mapping[str, bytes | str] | None = None,
    *,
    compression: str = "gzip",
    extra: list[tarfile.TarInfo] | None = None,
) -> bytes:
    """An ACI: ``manifest`` (a doc, raw bytes or None for none) and ``rootfs/`` files.

    A ``files`` value that is a str is a symlink target; bytes are contents.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if manifest is not None:
            data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
            info = tarfile.TarInfo("manifest")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        root = tarfile.TarInfo("rootfs")
        root.type = tarfile.DIRTYPE
        root.mode = 0o755
        tar.addfile(root)
        made: set[str] = set()
        for name, content in (files or {}).items():
            parts = name.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in made:
                    made.add(parent)
                    entry = tarfile.TarInfo(f"rootfs/{parent}")
                    entry.type = tarfile.DIRTYPE
                    entry.mode = 0o755
                    tar.addfile(entry)
            info = tarfile.TarInfo(f"rootfs/{name}")
            info.mtime = 1_600_000_000
            if isinstance(content, str):
                info.type = tarfile.SYMTYPE
                info.linkname = content
                tar.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(content))
        for info in extra or []:
            tar.addfile(info)
    raw = buffer.getvalue()
    if compression == "gzip":
        return gzip.compress(raw)
    if compression == "bzip2":
        return bz2.compress(raw)
    if compression == "xz":
        return lzma.compress(raw)
    return raw


def aci_file_name(name: str, version: str = "latest") -> str:
    return f"{name}-{version}-linux-{host_arch()}.aci"


def put_aci(directory: Path, name: str, data: bytes, version: str = "latest") -> Path:
    path = directory / aci_file_name(name, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# An app section that runs /bin/busybox (tests that run it put the host's in the ACI).
APP = {
    "exec": ["/bin/busybox", "echo", "hello from appc"],
    "user": "0",
    "group": "0",
    "environment": [{"name": "GREETING", "value": "hi"}],
    "workingDirectory": "/",
}


def rootfs_of(aci: Path, where: Path) -> Path:
    """The ACI's rootfs/ as GNU tar extracts it: the tree a provision must equal."""
    where.mkdir()
    subprocess.run(["tar", "-xf", str(aci), "-C", str(where), "rootfs"], check=True)
    return where / "rootfs"
