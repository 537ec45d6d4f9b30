"""Tar layers built in memory with tarfile, entry by entry, and applied to a directory.

``reg``, ``dir_``, ``sym`` and ``hard`` make one member each (``tar_info``
the header under them), ``layer`` packs members into a PAX tar, and
``apply_all`` applies layers bottom first with ``backends.apply``; ``tree``
reads the result back in a form a test compares whole.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from backends.apply import apply_layer

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

Member = tuple[tarfile.TarInfo, bytes]


def tar_info(name: str, kind: bytes, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"", **fields: object) -> Member:
    info = tar_info(name, tarfile.REGTYPE, **fields)
    info.size = len(data)
    return info, data


def dir_(name: str, **fields: object) -> Member:
    return tar_info(name, tarfile.DIRTYPE, **fields), b""


def sym(name: str, target: str, **fields: object) -> Member:
    return tar_info(name, tarfile.SYMTYPE, linkname=target, **fields), b""


def hard(name: str, target: str) -> Member:
    return tar_info(name, tarfile.LNKTYPE, linkname=target), b""


def xattrs(**values: bytes) -> dict[str, str]:
    """pax headers for xattrs; ``user_x`` names ``user.x``."""
    return {
        "SCHILY.xattr." + key.replace("_", ".", 1): value.decode("utf-8", "surrogateescape")
        for key, value in values.items()
    }


def layer(*members: Member) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data else None)
    buffer.seek(0)
    return buffer


def apply_all(root: Path, *layers: io.BytesIO) -> None:
    for index, stream in enumerate(layers):
        apply_layer(root, stream, layer=f"layer{index}")


def tree(root: Path) -> dict[str, str]:
    """Everything under ``root``: path -> "dir", "file:<content>" or "link:<target>"."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[key] = "dir"
        elif path.is_file():
            found[key] = f"file:{path.read_bytes().decode()}"
        else:
            found[key] = stat.filemode(path.lstat().st_mode)
    return found
