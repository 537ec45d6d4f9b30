"""ACIs made with tarfile, a loopback HTTP server for simple discovery, and the CLI."""

from __future__ import annotations

import bz2
import functools
import gzip
import http.server
import io
import json
import lzma
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends.mounts import mounts_under, unmount_all_under
from providers.appc_store import host_arch
from tests.httpserver import serve


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


@pytest.fixture
def aci_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "acis"
    directory.mkdir()
    return directory


@pytest.fixture
def http_prefix(aci_dir: Path) -> Iterator[str]:
    """An HTTP server on loopback serving ``aci_dir``; yields its URL prefix."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(aci_dir))
    with serve(handler) as url:
        yield url + "/"


@dataclass
class AppcLazyfs:
    work_dir: Path
    prefix: str

    def __call__(
        self, *args: str, check: bool = True, prefix: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "lazyfs",
            "--work_dir",
            str(self.work_dir),
            "--image_providers",
            "appc,docker",
            "--appc_simple_discovery_uri_prefix",
            self.prefix if prefix is None else prefix,
            *args,
        ]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
        return result


@pytest.fixture
def appc_lazyfs(tmp_path: Path, aci_dir: Path) -> Iterator[AppcLazyfs]:
    yield AppcLazyfs(tmp_path / "work", str(aci_dir) + "/")
    if mounts_under(tmp_path):
        unmount_all_under(tmp_path)
