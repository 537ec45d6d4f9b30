"""What the mount server and its callers share: the frame of a message, and the code key.

A message is a JSON object after its length (``LENGTH``, at most
``MAX_MESSAGE`` bytes). A server serves only the code a mount would exec
now (see ``lazyfs.fs.mount_server_client``): ``code_key`` names the Python,
the import path, and the lazyfs, providers and pyfuse3 files by path, size
and mtime; the server computes it at its start, a caller for every mount.

Imports: the standard library only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import struct
import sys
from collections.abc import Mapping
from typing import Any

MAX_MESSAGE = 1 << 20
LENGTH = struct.Struct(">I")


def encode(message: Mapping[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return LENGTH.pack(len(data)) + data


def read_exactly(conn: socket.socket, size: int, have: bytes) -> bytes:
    """``size`` bytes from ``conn``, starting with the ``have`` read already; EOFError if short."""
    while len(have) < size:
        chunk = conn.recv(size - len(have))
        if not chunk:
            raise EOFError("the peer hung up")
        have += chunk
    return have


def code_key() -> str:
    """What a server's code must match to serve a mount this process would exec now.

    Computed for every mount, so it stats the files and reads none: a few
    hundred stats by ``os.scandir``, about a millisecond. (No installed
    version: asking ``importlib.metadata`` scans the import path, some 80 ms
    of a command's start, and an upgrade changes the files anyway.)
    """
    digest = hashlib.sha256()
    digest.update(f"{sys.version}\0{sys.executable}\0".encode())
    digest.update(os.environ.get("PYTHONPATH", "").encode() + b"\0")
    for package in ("lazyfs", "providers", "pyfuse3"):
        spec = importlib.util.find_spec(package)
        origin = None if spec is None else spec.origin
        if origin is None:
            digest.update(f"{package}: none\n".encode())
            continue
        package_dir = spec is not None and spec.submodule_search_locations is not None
        root = os.path.dirname(origin) if package_dir else origin
        for path, stat in _code_files(root):
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _code_files(root: str) -> list[tuple[str, os.stat_result]]:
    """Every ``.py`` and ``.so`` file under ``root`` (or ``root`` itself) with its stat, sorted."""
    if not os.path.isdir(root):
        return [(root, os.stat(root))]
    found: list[tuple[str, os.stat_result]] = []
    pending = [root]
    while pending:
        with os.scandir(pending.pop()) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append(entry.path)
                elif entry.name.endswith((".py", ".so")):
                    found.append((entry.path, entry.stat()))
    return sorted(found)
